"""Prediction with a trained run: probability, decision and Grad-CAM for scans.

One Predictor per run holds the loaded model, its input size and the threshold
chosen on validation; the app caches it and shares it between sessions.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from core.base import paths
from core.data import lung
from core.runs import catalogue, checks, storage
from core.inference import pair, site_store
from core.inference.calibration import Calibration
from core.inference.explain import Explainer
from core.inference.heatmaps import overlay
from core.models.resnet import features_model, load_model, predict_proba
from core.inference.ood import Guard, image_problems
from core.data.images import model_input


def latest_completed_run(runs_root=None) -> Path:
    for run in catalogue.list_runs(runs_root):  # a damaged run (core.runs.checks) is passed over
        if (run["status"].get("state") == "completed" and storage.has_model(run["path"])
                and not run["problems"]):
            return run["path"]
    raise ValueError(f"no completed run with a model yet in {runs_root or paths.runs_dir()}: train one "
                     "first (python -m core train)")


@dataclass
class Prediction:
    name: str
    image: np.ndarray        # the slice as decoded, uint8 HxWx3 at its own size
    probability: float       # of the positive class, calibrated (core.inference.calibration)
    threshold: float         # on the calibrated scale
    positive_class: str
    negative_class: str
    raw_probability: float | None = None  # the model's own output; None: same as probability
    raw_threshold: float | None = None
    borderline_band: tuple[float, float] | None = None  # calibrated (low, high): too close to call
    ood_problems: list[str] = field(default_factory=list)  # why the slice is refused; [] passes
    guarded: bool = False     # False: the run has no out-of-distribution reference (not deployed)
    site: str | None = None   # the site profile that calibrated it (core.inference.site_profile); None: the run's own

    @property
    def label(self) -> str:
        # On the raw scale: calibration is increasing, so this is the calibrated decision
        # too, without a rounding error ever flipping a probability that sits on the threshold.
        raw = self.probability if self.raw_probability is None else self.raw_probability
        threshold = self.threshold if self.raw_threshold is None else self.raw_threshold
        return self.positive_class if raw >= threshold else self.negative_class

    @property
    def class_index(self) -> int:
        """1 when the decision is the positive class, else 0 (the class Grad-CAM explains)."""
        return int(self.label == self.positive_class)

    @property
    def borderline(self) -> bool:
        band = self.borderline_band
        return band is not None and band[0] <= self.probability <= band[1]

    @property
    def refused(self) -> bool:
        return bool(self.ood_problems)


@dataclass
class Predictor:
    run_dir: Path
    model: object
    input_size: int
    threshold: float
    positive_class: str
    negative_class: str
    flip_tta: bool = False
    lung_crop: bool = False  # the run's models see each slice cropped to its lung fields
    lung_mask: bool = False  # ... and blanked outside them (core.data.lung.lung_view)
    calibration: Calibration = field(default_factory=Calibration)
    guard: Guard | None = None
    site: str | None = None  # the site profile whose calibration and threshold it uses; None: the run's own
    members: tuple = ()  # a pair (core.inference.pair): its two runs' predictors; model is then None
    batch_size: int = 32
    _explainer: Explainer | None = field(default=None, repr=False)
    _features_model: object = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_run(cls, run_dir, site: str | None = None) -> "Predictor":
        """The run's predictor; with `site`, calibrated and decided by that
        site's profile (core.inference.site_profile) instead of the run's validation."""
        run_dir = checks.require_intact(run_dir)
        members = pair.members_of(run_dir)
        if members:
            return cls.from_pair(run_dir, members).for_site(site)
        model_path = run_dir / "model.keras"
        if not model_path.exists():
            raise ValueError(f"{run_dir.name}: this run has no model.keras (not completed?)")
        checked = checks.check_run(run_dir)  # each file validated on its schema, and intact
        config, metrics = checked["config"], checked["metrics"]
        if not metrics:  # a run stopped before it evaluated: no threshold or calibration to answer with
            state = (checked["status"] or {}).get("state", "unknown")
            raise ValueError(f"{run_dir.name}: this run has no validation threshold or calibration "
                             f"(metrics.json missing; its state: {state}): only a run that finished can predict")
        negative, positive = storage.class_names(config, metrics)
        return cls(run_dir=run_dir, model=load_model(model_path), input_size=int(config.get("input_size", 224)),
                   threshold=storage.decision_threshold(metrics), positive_class=positive,
                   negative_class=negative, flip_tta=bool(config.get("flip_tta", False)),
                   lung_crop=bool(config.get("lung_crop", False)), lung_mask=bool(config.get("lung_mask", False)),
                   calibration=site_store.calibration_of(run_dir), guard=Guard.from_run(run_dir)).for_site(site)

    @classmethod
    def from_pair(cls, run_dir: Path, members: tuple[Path, Path]) -> Predictor:
        """A pair's predictor: its members' models and guards, its own calibration and threshold."""
        first, second = (cls.from_run(member) for member in members)
        checked = checks.check_run(run_dir)
        negative, positive = storage.class_names(checked["config"], checked["metrics"])
        return cls(run_dir=run_dir, model=None, input_size=first.input_size,
                   threshold=storage.decision_threshold(checked["metrics"]), positive_class=positive,
                   negative_class=negative, lung_crop=first.lung_crop, lung_mask=first.lung_mask,
                   calibration=site_store.calibration_of(run_dir), members=(first, second))

    def for_site(self, site: str | None) -> "Predictor":
        """This predictor calibrated and decided by a site profile: the same
        model, shared (a site costs no second copy); itself without a site."""
        if not site:
            return self
        calibration = site_store.calibration_of(self.run_dir, site)  # its threshold on the model's raw scale
        return replace(self, calibration=calibration, threshold=calibration.raw_threshold, site=site)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return model_input(image, self.input_size, self.lung_crop, self.lung_mask).astype("float32")

    def view(self, image: np.ndarray) -> np.ndarray:
        """What the model sees of a decoded slice, at its own resolution: the
        lung fields where the run crops to them (and only they where it masks), else the whole scan."""
        return lung.lung_view(image, self.lung_crop, self.lung_mask)

    def lung_fields(self, image: np.ndarray) -> np.ndarray:
        """The lung mask on the view: found before any masking (a blanked slice has no body to find them in)."""
        return lung.lung_mask(lung.lung_view(image, self.lung_crop))

    def _forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(raw probabilities, pooled backbone features) of prepared slices, in one pass."""
        if self.members:
            raise ValueError(f"{self.run_dir.name} is a pair of runs ({', '.join(m.run_dir.name for m in self.members)})"
                             ": its features are its members'; use one of them for a site's profile")
        with self._lock:  # built once, lazily: it shares the model's layers
            if self._features_model is None:
                self._features_model = features_model(self.model)
        return predict_proba(self._features_model, batch, self.batch_size, flip_tta=self.flip_tta,
                             with_features=True)

    def features(self, batch: np.ndarray) -> np.ndarray:
        """Pooled backbone features of prepared (resized) slices, N x D."""
        return self._forward(np.asarray(batch, dtype="float32"))[1]

    def raw_and_features(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(raw probabilities, pooled features) of decoded scans, in one pass (core.inference.site_check)."""
        return self._forward(np.stack([self.prepare(image) for image in images]))

    def predict_images(self, images: list[np.ndarray], names: list[str]) -> list[Prediction]:
        """Decoded slices (any size) -> one Prediction each, in one batch:
        calibrated probability, decision, and the out-of-distribution check."""
        if not images:
            return []
        raw, refusals, guarded = self._raw_and_refusals(images, names)
        calibrated = self.calibration.apply(raw)
        return [Prediction(name, image, float(p), self.calibration.threshold, self.positive_class,
                           self.negative_class, raw_probability=float(r), raw_threshold=self.threshold,
                           borderline_band=self.calibration.borderline,
                           ood_problems=problems, guarded=guarded, site=self.site)
                for name, image, p, r, problems in zip(names, images, calibrated, raw, refusals)]

    def _raw_and_refusals(self, images, names) -> tuple[np.ndarray, list[list[str]], bool]:
        """(raw probabilities, each slice's refusals, whether a guard checked them). A pair averages
        its members' raw probabilities and refuses what either member's guard refuses."""
        if self.members:
            answers = [member.predict_images(images, names) for member in self.members]
            raw = np.mean([[p.raw_probability for p in answer] for answer in answers], axis=0)
            refusals = [list(dict.fromkeys(a.ood_problems + b.ood_problems)) for a, b in zip(*answers)]
            return raw, refusals, all(member.guard is not None for member in self.members)
        raw, features = self._forward(np.stack([self.prepare(image) for image in images]))
        refusals = self.guard.problems(images, features) if self.guard else [image_problems(i) for i in images]
        return raw, refusals, self.guard is not None

    @property
    def explainer(self) -> Explainer:
        with self._lock:  # its Grad-CAM models share the model's layers: build them once, lazily
            if self._explainer is None:
                self._explainer = Explainer(self.model)
        return self._explainer

    def gradcam(self, image: np.ndarray, method: str = "gradcam", class_index: int = 1) -> np.ndarray:
        """Heatmap in [0, 1] at the model's input size for one decoded slice:
        evidence for the positive class (1) or the negative one (0). A pair: its members' maps averaged."""
        if self.members:
            return pair.average_maps([m.gradcam(image, method, class_index) for m in self.members], self.input_size)
        return self.explainer.heatmaps(self.prepare(image)[None], method=method, class_index=class_index)[0]

    def gradcam_overlay(self, image: np.ndarray, method: str = "gradcam", alpha: float = 0.4,
                        class_index: int = 1) -> np.ndarray:
        """The slice (as the model sees it: view) at its own size with the Grad-CAM heatmap blended over it."""
        return overlay(self.view(image), self.gradcam(image, method, class_index), alpha=alpha)
