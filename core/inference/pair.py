"""Serving the average of two runs as one model (a "pair").

Two runs of different recipes (the ImageNet ResNet-50 and the CT
ResNet-152, say) err on different slices; their average can beat either.
A pair is a run folder of its own, so Predict, the CLI and deployment
serve it as they serve any run:

- pair.json names the two member runs (they keep their models);
- predictions.csv holds the mean of the two members' *raw* probabilities on
  the same validation and test slices, and metrics.json the figures and the
  threshold chosen from them on validation, as a trained run's;
- the calibration (core.inference.calibration) is then fitted, as for any
  run, on the averaged validation scores. Averaging two calibrated
  probabilities would not give a calibrated one (the mean of two confident
  models is less confident than either), so the pair calibrates its own
  average, once, on validation.

When it predicts (core.inference.predict.Predictor with members), each slice
goes through both models, the raw probabilities are averaged and calibrated
by the pair; the slice is refused when either member's out-of-distribution
guard refuses it; its Grad-CAM is the mean of the two members' maps, resized
to one size. Both members must see the same view of a slice (lung crop and
mask) so that their maps lie on the same pixels.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from core.base import files
from core.evaluation import classification
from core.runs import checks, storage
from core.runs.schemas import PAIR

# What both members must share: the classes, the slices they were scored on, the view of a slice.
SAME_VIEW = ("lung_crop", "lung_mask")


def members_of(run_dir) -> tuple[Path, Path] | None:
    """The two member run folders of a pair, None for a run that is not one."""
    found = files.read_json(Path(run_dir) / PAIR, None)
    if found is None:
        return None
    members = found.get("members") if isinstance(found, dict) else None
    if not isinstance(members, list) or len(members) != 2 or not all(isinstance(m, str) for m in members):
        raise checks.DamagedRun(f"{Path(run_dir) / PAIR}: 'members' must be a list of two run ids")
    return tuple(storage.run_path(files.check_name(member, "run id"), Path(run_dir).parent) for member in members)


def averaged_predictions(first: Path, second: Path):
    """The two runs' validation and test predictions, their raw probabilities averaged per slice."""
    frames = [storage.read_predictions(run_dir).set_index(["split", "path"]) for run_dir in (first, second)]
    if set(frames[0].index) != set(frames[1].index):
        raise ValueError(f"runs {first.name} and {second.name} were not scored on the same slices: "
                         "a pair needs two runs of the same data and split")
    joined = frames[0].join(frames[1], rsuffix="_second")
    if not (joined["y_true"] == joined["y_true_second"]).all():
        raise ValueError(f"runs {first.name} and {second.name} disagree on the labels of the same slices")
    joined["prob"] = (joined["prob"] + joined["prob_second"]) / 2
    return joined.reset_index()[["path", "y_true", "prob", "split"]]


def member_problems(first: Path, second: Path) -> list[str]:
    """Why two runs cannot make a pair; [] when they can."""
    found = []
    for run_dir in (first, second):
        checks.require_intact(run_dir)
        if not (run_dir / "model.keras").exists():
            found.append(f"run {run_dir.name} has no model.keras (a pair's members are trained runs)")
    if first == second:
        found.append("a pair needs two different runs")
    configs = [checks.check_run(run_dir)["config"] for run_dir in (first, second)]
    found += [f"{key} differs ({configs[0].get(key)!r} and {configs[1].get(key)!r}): their Grad-CAM maps "
              "would not lie on the same pixels" for key in SAME_VIEW if configs[0].get(key) != configs[1].get(key)]
    labels = [storage.class_names(c, checks.check_run(d)["metrics"]) for c, d in zip(configs, (first, second))]
    if labels[0] != labels[1]:
        found.append(f"their classes differ ({labels[0]} and {labels[1]})")
    return found


def make_pair(first: Path, second: Path, name: str | None = None) -> Path:
    """A pair run of two trained runs (in the first one's runs folder): its pair.json,
    averaged predictions and its metrics, threshold chosen on validation. ValueError naming
    the problem when they cannot make one."""
    first, second = Path(first), Path(second)
    found = member_problems(first, second)
    if found:
        raise ValueError(f"runs {first.name} and {second.name} cannot make a pair: {'; '.join(found)}")
    config = checks.check_run(first)["config"]
    predictions = averaged_predictions(first, second)
    run_dir = storage.new_run(config, name=name or "pair", runs_root=first.parent)
    files.write_json(run_dir / PAIR, {"members": [first.name, second.name]})
    files.write_csv(run_dir / "predictions.csv", predictions)
    metrics = classification.evaluate_predictions(predictions, seed=int(config.get("seed", 0)),
                                                  threshold_method=config.get("threshold_method",
                                                                              classification.THRESHOLD_RULE))
    metrics["labels"] = checks.check_run(first)["metrics"].get("labels")
    files.write_json(run_dir / "metrics.json", metrics)
    storage.set_status(run_dir, "completed", phase="done", pair=[first.name, second.name])
    return run_dir


def average_maps(maps: list[np.ndarray], size: int) -> np.ndarray:
    """The mean of heatmaps of any sizes, each resized to size x size first."""
    return np.mean([cv2.resize(np.asarray(m, np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
                    for m in maps], axis=0)
