"""Run storage: one folder per training run under artifacts/runs/<id>/.

A run folder holds config.json, status.json, history.csv, model.keras,
metrics.json and predictions.csv. Every file that matters is written to a
temporary file and renamed into place, so a crash mid-write leaves the previous
version intact, never half a file.
"""
from __future__ import annotations

import copy
import json
import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from core import paths

# "pruned": stopped early by a hyperparameter search (core.tune) for a poor validation AUC.
STATES = ("running", "completed", "failed", "cancelled", "interrupted", "pruned")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, data) -> None:
    _atomic_write(path, lambda handle: json.dump(data, handle, indent=2, default=str))


def write_csv(path, frame: pd.DataFrame) -> None:
    _atomic_write(path, lambda handle: frame.to_csv(handle, index=False))


def read_json(path, default=None):
    """The file's JSON, `default` when it is missing; ValueError naming the
    file when it is empty or not JSON (a damaged run, core.run_check)."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return default
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None


def check_run_id(run_id: str) -> str:
    """Run ids become folder names: refuse anything that could leave runs/."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id) or ".." in run_id:
        raise ValueError(f"invalid run id {run_id!r}: use letters, digits, '.', '_' and '-' only")
    return run_id


def run_path(run_id: str, runs_root=None) -> Path:
    return Path(runs_root or paths.runs_dir()) / check_run_id(run_id)


def new_run(config: dict, name: str | None = None, runs_root=None) -> Path:
    """Create a run folder with its config.json and a 'running' status."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_id = check_run_id(f"{stamp}-{name}" if name else stamp)
    folder = run_path(run_id, runs_root)
    suffix = 1
    while folder.exists():  # two runs started in the same second
        suffix += 1
        folder = run_path(f"{run_id}-{suffix}", runs_root)
    folder.mkdir(parents=True)
    write_json(folder / "config.json", config)
    set_status(folder, "running", pid=os.getpid(), started_at=now())
    return folder


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def set_status(run_dir, state: str, **fields) -> dict:
    """Merge `fields` into status.json and set its state."""
    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}")
    status = read_json(Path(run_dir) / "status.json", {})
    status.update(fields, state=state, updated_at=now())
    write_json(Path(run_dir) / "status.json", status)
    return status


def pid_alive(pid) -> bool:
    try:
        pid = int(pid)
        # A training started by this process (the app) that died stays a
        # zombie until reaped, and a zombie still answers kill(pid, 0).
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return False
        except ChildProcessError:
            pass  # not our child
        os.kill(pid, 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def read_status(run_dir) -> dict:
    """status.json, with a 'running' run whose process is gone reported as
    'interrupted' (it was killed or the machine stopped)."""
    return _live_state(read_json(Path(run_dir) / "status.json", {"state": "interrupted"}))


def _live_state(status: dict) -> dict:
    if status.get("state") == "running" and not pid_alive(status.get("pid")):
        status["state"] = "interrupted"
    return status


def load_run(run_dir) -> dict:
    """Everything small about a run: id, folder, config, status, metrics, and
    the problems that make it damaged (core.run_check; [] when intact). A
    file that cannot be read is {} or None here, never an exception."""
    from core import run_check

    run_dir = Path(run_dir)
    checked = copy.deepcopy(run_check.check_run(run_dir))
    status = checked["status"]
    if status is None:  # missing: killed before its first status; unreadable: damaged
        status = {} if (run_dir / "status.json").exists() else {"state": "interrupted"}
    return {
        "id": run_dir.name,
        "path": run_dir,
        "config": checked["config"],
        "status": _live_state(status),
        "metrics": checked["metrics"],
        "problems": checked["problems"],
    }


def decision_threshold(metrics: dict | None) -> float:
    """The threshold a run chose on validation (0.5 before it is evaluated)."""
    return float(((metrics or {}).get("threshold") or {}).get("value", 0.5))


def class_names(config: dict, metrics: dict | None) -> tuple[str, str]:
    """(negative, positive) class names of a run."""
    labels = (metrics or {}).get("labels") or {}
    return (labels.get("negative", "NonCOVID"),
            labels.get("positive", config.get("positive_class", "COVID")))


def list_runs(runs_root=None) -> list[dict]:
    """All runs, newest first."""
    root = Path(runs_root or paths.runs_dir())
    if not root.exists():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and (p / "config.json").exists()]
    return [load_run(p) for p in sorted(folders, key=lambda p: p.name, reverse=True)]


def read_history(run_dir) -> pd.DataFrame:
    """Per-epoch training log (empty before the first epoch ends)."""
    try:
        return pd.read_csv(Path(run_dir) / "history.csv")
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def read_predictions(run_dir) -> pd.DataFrame:
    return pd.read_csv(Path(run_dir) / "predictions.csv")


def cross_validation_groups(all_runs: list[dict]) -> list[list[dict]]:
    """Completed cross-validation runs (cv_folds >= 2) grouped by recipe: runs
    whose settings agree in everything but the fold they validate on. A group
    holds one run per fold in fold order (the newest, where a fold was trained
    twice); it can lack folds not trained yet. Groups come newest first."""
    groups: dict[str, dict[int, dict]] = {}
    for run in sorted(all_runs, key=lambda r: r["id"], reverse=True):
        config = run["config"]
        if run["status"].get("state") != "completed" or (config.get("cv_folds") or 0) < 2:
            continue
        recipe = json.dumps({k: v for k, v in config.items() if k != "cv_fold"}, sort_keys=True)
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
    """A completed run with its model, not damaged (core.run_check)."""
    return (run["status"].get("state") == "completed" and (run["path"] / "model.keras").exists()
            and not run.get("problems"))


def has_results(run: dict) -> bool:
    """A completed run with test predictions and metrics (what Evaluate needs)."""
    return (has_model(run) and (run["path"] / "predictions.csv").exists()
            and "test" in (run["metrics"] or {}))


def image_path(run: dict, relpath: str) -> Path:
    """Where a prediction's image is: under the run's data_dir (the source its
    relpath names, with several), or the current dataset folder when that
    one has moved."""
    from core import data  # image reading libraries: only for a run's images

    data_dir = run["config"].get("data_dir") or str(paths.data_dir())
    try:
        found = data.resolve_image(data_dir, relpath, run["config"].get("holdout_source") or "")
    except ValueError:
        return paths.data_dir() / relpath
    return found if found.parent.exists() else paths.data_dir() / relpath
