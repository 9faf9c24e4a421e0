"""Site profiles on disk, beside the deployed run (RUN/sites/<name>/): read,
listed, removed, and applied to the model's raw probabilities. Fitting one
is core.inference.site_profile's."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from core.base import files
from core.inference.calibration import Calibration, for_run


SITES = "sites"


PROFILE_FILE = "profile.json"


PREDICTIONS_FILE = "predictions.csv"


def check_name(name: str) -> str:
    """Profile names become folder names: refuse anything that could leave sites/."""
    return files.check_name(name, "site name", max_length=64)


def profile_dir(run_dir, name: str) -> Path:
    return Path(run_dir) / SITES / check_name(name)


def store(folder: Path, profile: dict, predictions: pd.DataFrame) -> None:
    """Write the profile into a hidden folder beside `folder`, then rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        files.write_csv(staging / PREDICTIONS_FILE, predictions)
        files.write_json(staging / PROFILE_FILE, profile)
        if folder.exists():  # replace=True: the old profile goes only once the new one is whole
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_profile(run_dir, name: str) -> dict:
    """The stored profile; ValueError naming it when the run has none of that name."""
    path = profile_dir(run_dir, name) / PROFILE_FILE
    profile = files.read_json(path)
    if not isinstance(profile, dict):
        raise ValueError(f"run {Path(run_dir).name} has no site profile {name!r}"
                         " (python -m core site-profile list shows them)")
    return profile


def calibration_for(run_dir, name: str) -> Calibration:
    """The site's calibration, its threshold on the raw scale (raw_threshold)."""
    return Calibration.from_dict(load_profile(run_dir, name)["calibration"])


def calibration_of(run_dir, site: str | None = None) -> Calibration:
    """The calibration every probability shown for the run's model is on: the
    site profile's with `site`, else the run's own (fitted on its validation
    split). Predict, Misclassified, Evaluate and a scan's slices all take it
    from here, so one slice has one probability under one model and site."""
    return calibration_for(run_dir, site) if site else for_run(run_dir)


def apply_profile(run_dir, name: str, raw_probabilities) -> tuple[np.ndarray, float]:
    """(the model's raw probabilities calibrated for the site, the site's
    threshold on that calibrated scale)."""
    fitted = calibration_for(run_dir, name)
    return fitted.apply(raw_probabilities), fitted.threshold


def scan_settings(run_dir, name: str) -> dict:
    """Scan-level settings (core.inference.scan_decision) with the site's scan threshold."""
    scan = load_profile(run_dir, name)["scan"]
    return {"aggregation": scan["aggregation"], "threshold": scan["threshold"],
            "chosen_on": f"site {name}'s patients", "caveat": None, "site": name}


def list_profiles(run_dir) -> list[dict]:
    """The run's site profiles (profile.json contents), by name."""
    folder = Path(run_dir) / SITES
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        profile = files.read_json(path / PROFILE_FILE)
        if isinstance(profile, dict):
            found.append(profile)
    return found


def profiles_table(run_dir) -> pd.DataFrame:
    """One row per profile: name, fitted, patients, slices, calibration, threshold, site ROC-AUC (cross-fitted)."""
    rows = [{"name": p["name"], "fitted": p["fitted"], "patients": p["patients"]["total"], "slices": p["slices"],
             "calibration": p["calibration"]["method"], "threshold": round(p["threshold"], 3),
             "ROC-AUC (cross-fitted)": _rounded(p["cross_fitted"]["site"]["roc_auc"])} for p in list_profiles(run_dir)]
    return pd.DataFrame(rows, columns=["name", "fitted", "patients", "slices", "calibration", "threshold",
                                       "ROC-AUC (cross-fitted)"])


def _rounded(value):
    return None if value is None else round(value, 3)


def remove_profile(run_dir, name: str) -> None:
    folder = profile_dir(run_dir, name)
    if not folder.is_dir():
        raise ValueError(f"run {Path(run_dir).name} has no site profile {name!r}"
                         " (python -m core site-profile list shows them)")
    shutil.rmtree(folder)
