"""The site check (core.inference.site_check) of a run's external sets, stored
with each set's results as RUN/external/NAME/site_check.json.

An external set is a site the model never saw: beside its figures, Evaluate
says whether its scans differ from the model's validation scans, which is
what a hospital without labels would learn from the check. The check scores
every slice again and runs its permutations (seconds to minutes), so it is
computed once, on request, and stored atomically; a stored check counts
while it is newer than the set's metrics.json and the run's model.

Reading a stored check loads no TensorFlow; computing one does (site_check,
imported inside check_external)."""
from __future__ import annotations

import os
from pathlib import Path

from core.base import files
from core.inference import external

CHECK_FILE = "site_check.json"
KEPT = ("verdict", "message", "site", "reference", "classifier", "mmd", "slight", "needed", "guard",
        "probabilities", "problems", "run")  # the check's dict, all plain JSON


def _check_path(run_dir, name: str) -> Path:
    return external.results_dir(run_dir, name) / CHECK_FILE


def stored_check(run_dir, name: str) -> dict | None:
    """The set's stored check, None when there is none or it is older than the
    set's metrics or the run's model (evaluated again, or a new model)."""
    path, folder = _check_path(run_dir, name), external.results_dir(run_dir, name)
    if not path.is_file():
        return None
    newer_than = [Path(run_dir) / "model.keras", folder / "metrics.json"]
    if any(p.exists() and os.path.getmtime(p) > os.path.getmtime(path) for p in newer_than):
        return None
    try:
        found = files.read_json(path)
    except (ValueError, OSError):
        return None  # a damaged file: checked again on request
    return found if isinstance(found, dict) and "verdict" in found else None


def check_external(run_dir, name: str, predictor=None, report=lambda line: None) -> dict:
    """Run the site check on the external set `name`'s folder (its data_dir) and store it."""
    from core.inference import site_check  # TensorFlow: only when a check is computed

    metrics = external.read_metrics(run_dir, name)
    if not metrics or not metrics.get("data_dir"):
        raise ValueError(f"external set {name}: not evaluated yet (no metrics.json)")
    result = site_check.check_folder(run_dir, metrics["data_dir"], predictor=predictor, report=report)
    stored = {key: result[key] for key in KEPT if key in result}
    stored.update(set=name, data_dir=metrics["data_dir"])
    files.write_json(_check_path(run_dir, name), stored)
    return stored


def missing_checks(run_dir, names: list[str]) -> list[str]:
    """The sets among `names` without a current stored check."""
    return [name for name in names if stored_check(run_dir, name) is None]
