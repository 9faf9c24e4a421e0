"""The catalogue of runs: every run folder listed with its files checked
(core.runs.checks), compared side by side, grouped into cross-validated
recipes, and the tests for what a run can be used for."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pandas as pd

from core.base import files, paths
from core.data import datasets
from core.runs import checks, storage
from core.runs.storage import live_state
from core.runs.train_config import folds_of, recipe_of


def load_run(run_dir) -> dict:
    """Everything small about a run: id, folder, config, status, metrics, and
    the problems that make it damaged (core.runs.checks; [] when intact). A
    file that cannot be read is {} or None here, never an exception."""
    run_dir = Path(run_dir)
    checked = copy.deepcopy(checks.check_run(run_dir))
    status = checked["status"]
    if status is None:  # missing: killed before its first status; unreadable: damaged
        status = {} if (run_dir / "status.json").exists() else {"state": "interrupted"}
    return {
        "id": files.as_text(run_dir.name),  # a folder's name may hold bytes no table can: see "path"
        "path": run_dir,
        "config": checked["config"],
        "status": live_state(status),
        "metrics": checked["metrics"],
        "problems": checked["problems"],
    }


def list_runs(runs_root=None) -> list[dict]:
    """All runs, newest first: the folders of the runs folder (a link among
    them only where it leads to a folder inside it) that hold a config.json.
    No runs folder yet is no runs (the first run makes it); one that cannot
    be read (not a folder, no permission, an I/O error) is a ValueError, never
    an empty list."""
    root = Path(runs_root or paths.runs_dir())
    try:
        with os.scandir(root) as entries:
            folders = [Path(entry.path) for entry in entries
                       if entry.is_dir() and not (entry.is_symlink() and files.outside(entry.path, root))]
    except FileNotFoundError:
        return []
    except OSError as error:
        raise ValueError(f"{root}: cannot read the runs folder ({error.strerror or error})") from None
    folders = [p for p in folders if os.path.lexists(p / "config.json")]
    return [load_run(p) for p in sorted(folders, key=lambda p: p.name, reverse=True)]


def cross_validation_groups(all_runs: list[dict]) -> list[list[dict]]:
    """Completed cross-validation runs (cv_folds >= 2) grouped by recipe: runs
    of one recipe on the same folds, each validating on another fold. A group
    holds one run per fold in fold order (the newest, where a fold was trained
    twice); it can lack folds not trained yet. Groups come newest first."""
    groups: dict[str, dict[int, dict]] = {}
    for run in sorted(all_runs, key=lambda r: r["id"], reverse=True):
        config = run["config"]
        if run["status"].get("state") != "completed" or (config.get("cv_folds") or 0) < 2:
            continue
        recipe = json.dumps([recipe_of(config), folds_of(config)], sort_keys=True)
        groups.setdefault(recipe, {}).setdefault(config.get("cv_fold", 0), run)
    return [[folds[f] for f in sorted(folds)] for folds in groups.values()]


COMPARED_SETTINGS = ("backbone", "input_size", "batch_size", "train_from", "head_epochs",
                     "finetune_epochs", "head_lr", "finetune_lr", "dropout", "seed")


def compare_runs(runs: list[dict]) -> pd.DataFrame:
    """One row per run: its hyperparameters, its validation ROC-AUC (what a
    search scores) and its test metrics at the validation-chosen threshold;
    `study` names the search a trial run belongs to."""
    rows = []
    for run in runs:
        row = {"run": run["id"], "state": "damaged" if run.get("problems") else run["status"].get("state"),
               "study": run["status"].get("study")}
        row.update({key: run["config"].get(key) for key in COMPARED_SETTINGS})
        val = ((run["metrics"] or {}).get("val") or {}).get("at_threshold") or {}
        row["val_roc_auc"] = val.get("roc_auc")
        test = ((run["metrics"] or {}).get("test") or {}).get("at_threshold") or {}
        for metric in ("roc_auc", "pr_auc", "accuracy", "f1", "recall", "specificity"):
            row[f"test_{metric}"] = test.get(metric)
        row["train_seconds"] = run["status"].get("train_seconds")
        row["problem"] = "; ".join(run.get("problems") or []) or None
        rows.append(row)
    return pd.DataFrame(rows)


def has_model(run: dict) -> bool:
    """A completed run with its model, not damaged (core.runs.checks)."""
    return (run["status"].get("state") == "completed" and storage.has_model(run["path"])
            and not run.get("problems"))


def has_results(run: dict) -> bool:
    """A completed run with test predictions and metrics (what Evaluate needs)."""
    return (has_model(run) and (run["path"] / "predictions.csv").exists()
            and "test" in (run["metrics"] or {}))


def image_path(run: dict, relpath: str) -> Path:
    """Where a prediction's image is: under the run's data_dir (the source its
    relpath names, with several), or the current dataset folder when that
    one has moved."""
    data_dir = run["config"].get("data_dir") or str(paths.data_dir())
    try:
        found = datasets.resolve_image(data_dir, relpath, run["config"].get("holdout_source") or "")
    except ValueError:
        return paths.data_dir() / relpath
    return found if found.parent.exists() else paths.data_dir() / relpath
