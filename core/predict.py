"""Prediction with a trained run: probability, decision and Grad-CAM for scans.

One Predictor per run holds the loaded model, its input size and the threshold
chosen on validation; the app caches it and shares it between sessions.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core import data, lung, run_check, runs
from core.explain import Explainer, overlay
from core.model import load_model, predict_proba


def latest_completed_run(runs_root=None) -> Path:
    for run in runs.list_runs(runs_root):  # a damaged run (core.run_check) is passed over
        if (run["status"].get("state") == "completed" and (run["path"] / "model.keras").exists()
                and not run["problems"]):
            return run["path"]
    raise ValueError("no completed run with a model yet: train one first (python -m core train)")


@dataclass
class Prediction:
    name: str
    image: np.ndarray        # the scan as decoded, uint8 HxWx3 at its own size
    probability: float       # of the positive class
    threshold: float
    positive_class: str
    negative_class: str

    @property
    def label(self) -> str:
        return self.positive_class if self.probability >= self.threshold else self.negative_class


@dataclass
class Predictor:
    run_dir: Path
    model: object
    input_size: int
    threshold: float
    positive_class: str
    negative_class: str
    flip_tta: bool = False
    rotate_zoom_tta: bool = False  # runs trained before this option had none
    fill_mode: str = "reflect"
    lung_crop: bool = False  # the run's models see each scan cropped to its lung fields
    _explainer: Explainer | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_run(cls, run_dir) -> "Predictor":
        run_dir = run_check.require_intact(run_dir)
        model_path = run_dir / "model.keras"
        if not model_path.exists():
            raise ValueError(f"{run_dir.name}: this run has no model.keras (not completed?)")
        config = runs.read_json(run_dir / "config.json", {})
        metrics = runs.read_json(run_dir / "metrics.json")
        negative, positive = runs.class_names(config, metrics)
        return cls(run_dir=run_dir, model=load_model(model_path), input_size=int(config.get("input_size", 224)),
                   threshold=runs.decision_threshold(metrics), positive_class=positive,
                   negative_class=negative, flip_tta=bool(config.get("flip_tta", False)),
                   rotate_zoom_tta=bool(config.get("rotate_zoom_tta", False)),
                   fill_mode=config.get("fill_mode", "reflect"), lung_crop=bool(config.get("lung_crop", False)))

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return data.model_input(image, self.input_size, self.lung_crop).astype("float32")

    def view(self, image: np.ndarray) -> np.ndarray:
        """The part of a decoded scan the model sees, at its own resolution:
        the lung fields where the run crops to them, else the whole scan."""
        return lung.crop_to_lungs(image) if self.lung_crop else image

    def predict_images(self, images: list[np.ndarray], names: list[str]) -> list[Prediction]:
        """Decoded scans (any size) -> one Prediction each, in one batch."""
        batch = np.stack([self.prepare(image) for image in images]) if images else np.zeros((0,))
        probabilities = (predict_proba(self.model, batch, flip_tta=self.flip_tta,
                                       rotate_zoom_tta=self.rotate_zoom_tta, fill_mode=self.fill_mode)
                         if len(batch) else [])
        return [Prediction(name, image, float(p), self.threshold, self.positive_class, self.negative_class)
                for name, image, p in zip(names, images, probabilities)]

    def predict_file(self, source, name: str | None = None) -> Prediction:
        """A path or uploaded bytes -> Prediction; ImageReadError names a bad file."""
        name = name or Path(str(source)).name
        return self.predict_images([data.load_image(source, name=name)], [name])[0]

    @property
    def explainer(self) -> Explainer:
        with self._lock:  # tf-keras-vis clones the model: build it once, lazily
            if self._explainer is None:
                self._explainer = Explainer(self.model)
        return self._explainer

    def gradcam(self, image: np.ndarray, method: str = "gradcam", class_index: int = 1) -> np.ndarray:
        """Heatmap in [0, 1] at the model's input size for one decoded scan:
        evidence for the positive class (1) or the negative one (0)."""
        return self.explainer.heatmaps(self.prepare(image)[None], method=method, class_index=class_index)[0]

    def gradcam_overlay(self, image: np.ndarray, method: str = "gradcam", alpha: float = 0.4,
                        class_index: int = 1) -> np.ndarray:
        """The scan (as the model sees it: view) at its own size with the Grad-CAM heatmap blended over it."""
        return overlay(self.view(image), self.gradcam(image, method, class_index), alpha=alpha)
