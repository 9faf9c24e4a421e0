"""Lung focus, a measured property of a run: how much of its Grad-CAM
evidence lies in the lung fields (core.data.lung.lung_mask), on its test
split and on each external panel set, beside how much of the slice the
lungs cover. A model that decides from the lungs puts its evidence there far
more often than a map spread evenly would (ratio well above 1).

Stored in the run as lung_focus.json: {set: {method: summary}}.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.base import files, paths
from core.data import datasets
from core.data.images import load_image
from core.inference import external, heatmaps
from core.runs import storage

FILE = "lung_focus.json"
METHODS = ("gradcam", "gradcam++")
# At the end of training: the test split only, Grad-CAM only, at most this many slices spread over
# it. Each costs a forward and a backward pass (0.6 s at 224 px on two shared CPU cores: 48 take about
# 30 s, measured by timing ResNet-50 Grad-CAM and lung masks on 5 COVID-CT slices), so the whole
# split (203 slices on COVID-CT) and the panel would add minutes to every run: `python -m core
# lung-focus` measures them all when asked.
AFTER_TRAINING_SLICES = 48


def slice_focus(predictor, image: np.ndarray, method: str = "gradcam") -> dict | None:
    """lung_focus of the map of the class the model decided, on the slice as the model sees it."""
    decided = predictor.predict_images([image], ["slice"])[0]
    heatmap = predictor.gradcam(image, method=method, class_index=decided.class_index)
    return heatmaps.lung_focus(heatmap, predictor.lung_fields(image))


def measure(predictor, image_paths, method: str = "gradcam") -> pd.DataFrame:
    """One row per slice with a lung mask: in_lungs, lung_share, ratio, peak_in_lungs."""
    rows = []
    for path in image_paths:
        found = slice_focus(predictor, load_image(path), method)
        if found is not None:
            rows.append({"path": str(path), **found})
    return pd.DataFrame(rows, columns=["path", "in_lungs", "lung_share", "ratio", "peak_in_lungs"])


def summarise(frame: pd.DataFrame, asked: int) -> dict:
    """Means over the slices measured; "slices" measured of `asked` (the others have no lung mask)."""
    if frame.empty:
        return {"slices": 0, "asked": asked}
    return {"slices": len(frame), "asked": asked, "in_lungs": float(frame["in_lungs"].mean()),
            "lung_share": float(frame["lung_share"].mean()), "ratio": float(frame["ratio"].mean()),
            "peak_in_lungs": float(frame["peak_in_lungs"].mean()),
            "mostly_outside": float((frame["in_lungs"] < heatmaps.MOSTLY_OUTSIDE).mean())}


def spread(found: list, limit: int | None) -> list:
    """At most `limit` of `found`, evenly spaced over it: a split listed class by class gives both classes."""
    if not limit or len(found) <= limit:
        return list(found)
    return [found[i] for i in np.unique(np.linspace(0, len(found) - 1, limit).round().astype(int))]


def measured_sets(run_dir: Path, limit: int | None, panel: bool = True) -> dict[str, list[str]]:
    """{set name: image paths}: the run's test split and (with `panel`) each external panel set,
    at most `limit` each (spread)."""
    predictions = storage.read_predictions(run_dir)
    config = files.read_json(run_dir / "config.json", {})
    test = predictions.loc[predictions["split"] == "test", "path"]
    sets = {"test": [str(datasets.resolve_image(config.get("data_dir") or str(paths.data_dir()), relpath,
                                                config.get("holdout_source") or "")) for relpath in test]}
    for folder in paths.panel_dirs() if panel else ():
        if folder.is_dir():
            index = external.index_external(folder, *storage.class_names(config, files.read_json(
                run_dir / "metrics.json")))
            sets[datasets.source_name(folder)] = index["path"].tolist()
    return {name: spread(found, limit) for name, found in sets.items()}


def run_lung_focus(predictor, limit: int | None = None, methods=METHODS, report=lambda line: None,
                   panel: bool = True) -> dict:
    """Measure and store the run's lung focus ({set: {method: summary}})."""
    run_dir = Path(predictor.run_dir)
    results = {}
    for name, image_paths in measured_sets(run_dir, limit, panel).items():
        results[name] = {}
        for method in methods:
            report(f"lung focus: {name}, {method}, {len(image_paths)} slices")
            results[name][method] = summarise(measure(predictor, image_paths, method), len(image_paths))
    files.write_json(run_dir / FILE, results)
    return results


def after_training(run_dir: Path, report=lambda line: None) -> dict:
    """The lung focus every run stores when it ends (AFTER_TRAINING_SLICES of its test split, Grad-CAM)."""
    # TensorFlow, loaded here only: Evaluate reads the stored figures without it.
    from core.inference.predict import Predictor

    return run_lung_focus(Predictor.from_run(run_dir), limit=AFTER_TRAINING_SLICES, methods=("gradcam",),
                          report=report, panel=False)


def read(run_dir: Path) -> dict | None:
    """The run's stored lung focus, or None when it was never measured."""
    return files.read_json(Path(run_dir) / FILE, None)


def stored_ratio(run_dir: Path, name: str = "test", method: str = "gradcam") -> float | None:
    """The stored ratio of one set and method (1: no more than an even map), None when not measured."""
    summary = ((read(run_dir) or {}).get(name) or {}).get(method) or {}
    return summary.get("ratio")


def focus_table(results: dict) -> pd.DataFrame:
    """One row per set and method: slices, evidence in the lungs, the lungs' share, their ratio, peak in lungs."""
    rows = [{"set": name, "method": method, **summary} for name, methods in results.items()
            for method, summary in methods.items()]
    return pd.DataFrame(rows)
