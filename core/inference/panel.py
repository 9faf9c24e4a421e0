"""The external panel: labelled slices from hospitals the model never saw
(base.paths.panel_dirs), scored for every run that a comparison reports.

COVID-CT's own test split rewards shortcuts (docs/evidence-in-the-lungs.md),
so a recipe is also judged here: per set, slice- and patient-level ROC-AUC
with confidence intervals that resample patients, sensitivity and
specificity at the run's threshold, and the expected calibration error of
its calibrated probability. The panel is small (a few patients per set):
its intervals are wide, and nothing is decided inside them.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from core.base import paths
from core.data import datasets
from core.evaluation import patient_level
from core.inference import calibration, external
from core.runs.schemas import PAIR


def panel_results(run_dir, report=lambda line: None, refresh: bool = False) -> dict[str, dict]:
    """{set name: external metrics.json} for every panel set, evaluated now
    unless a complete result newer than the run's model is stored."""
    run_dir = Path(run_dir)
    stored = {found["name"]: found for found in external.list_external(run_dir)}
    results = {}
    for folder in paths.panel_dirs():
        if not folder.is_dir():
            raise ValueError(f"{folder}: external panel set not found (set COVIDCT_PANEL)")
        name = datasets.source_name(folder)
        found = stored.get(name)
        if refresh or not _current(run_dir, found, folder):
            external.evaluate_on(run_dir, folder, name=name, report=report)
            found = {"metrics": external.read_metrics(run_dir, name)}
        results[name] = found["metrics"]
    return results


def _current(run_dir: Path, found: dict | None, folder: Path) -> bool:
    """A complete stored result of this folder, newer than the run's model."""
    if not found or not found.get("metrics"):
        return False
    if found["metrics"].get("data_dir") != str(folder.expanduser().resolve()):
        return False
    metrics_file = external.results_dir(run_dir, found["name"]) / "metrics.json"
    model = run_dir / "model.keras" if (run_dir / "model.keras").exists() else run_dir / PAIR  # a pair: its members
    return os.path.getmtime(metrics_file) >= os.path.getmtime(model)


def panel_table(run_dir, results: dict[str, dict]) -> pd.DataFrame:
    """One row per set and level (slices, patients): n, ROC-AUC and its 95%
    CI, sensitivity and specificity at the run's threshold, and the
    calibration error of the calibrated probability."""
    calibrate = calibration.for_run(run_dir)
    rows = []
    for name, metrics in results.items():
        slices = external.read_predictions(run_dir, name).assign(prob=lambda f: calibrate.apply(f["prob"]))
        levels = [("slices", metrics["slice"], slices)]
        if metrics.get("patient"):
            levels.append(("patients", metrics["patient"],
                           patient_level.per_patient(slices, metrics["patient"]["aggregation"])))
        for level, figures, calibrated in levels:
            at = figures["at_threshold"]
            low, high = at["ci"]["roc_auc"]
            rows.append({"set": name, "level": level, "n": figures["n"], "roc_auc": at["roc_auc"],
                         "ci_low": low, "ci_high": high, "sensitivity": at["recall"],
                         "specificity": at["specificity"],
                         "ece": calibration.expected_calibration_error(calibrated["y_true"], calibrated["prob"])})
    return pd.DataFrame(rows)
