"""Run storage: one folder per training run under artifacts/runs/<id>/.

A run folder holds config.json, status.json, history.csv, model.keras,
metrics.json and predictions.csv. Every file that matters is written to a
temporary file and renamed into place, so a crash mid-write leaves the previous
version intact, never half a file.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from core.base import files, paths
from core.runs import checks
# "pruned": stopped early by a hyperparameter search (core.training.tune) for a poor validation AUC.
from core.runs.schemas import STATES  # noqa: F401 (the states a run can be in, as storage's callers name them)
from core.runs.schemas import MODEL, PAIR


def check_run_id(run_id: str) -> str:
    """Run ids become folder names: refuse anything that could leave runs/."""
    return files.check_name(run_id, "run id")


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
    files.write_json(folder / "config.json", config)
    set_status(folder, "running", **owner(os.getpid()), started_at=now())
    return folder


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def set_status(run_dir, state: str, **fields) -> dict:
    """Merge `fields` into status.json and set its state."""
    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}")
    status = files.read_json(Path(run_dir) / "status.json", {})
    status.update(fields, state=state, updated_at=now())
    files.write_json(Path(run_dir) / "status.json", status)
    return status


def process_start(pid) -> int | None:
    """When process `pid` started, in clock ticks since boot (field 22 of
    /proc/PID/stat); None when it is gone or this system has no /proc. With
    the pid it names one process: a pid is reused once its process ends."""
    try:
        line = files.read_regular(f"/proc/{int(pid)}/stat", 4096)
        return int(line.rsplit(b")", 1)[1].split()[19])  # fields after the command name start at field 3
    except (OSError, ValueError, IndexError, TypeError):
        return None


def owner(pid: int) -> dict:
    """The fields that name the process writing a status or holding a lock: its pid and start time."""
    return {"pid": pid, "pid_start": process_start(pid)}


def pid_alive(pid, started: int | None = None) -> bool:
    """Whether process `pid` lives, and, when `started` is known, is still the
    process that started then (not another that was given the same pid)."""
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
    except (OSError, TypeError, ValueError, OverflowError):
        return False
    return started is None or process_start(pid) in (started, None)


def read_status(run_dir) -> dict:
    """status.json, with a 'running' run whose process is gone reported as
    'interrupted' (it was killed or the machine stopped); DamagedRun naming the
    file and field when it fails its schema."""
    return live_state(checks.read_valid(Path(run_dir) / "status.json") or {"state": "interrupted"})


def live_state(status: dict) -> dict:
    if status.get("state") == "running" and not pid_alive(status.get("pid"), status.get("pid_start")):
        status["state"] = "interrupted"
    return status


def decision_threshold(metrics: dict | None) -> float:
    """The threshold a run chose on validation (0.5 before it is evaluated)."""
    return float(((metrics or {}).get("threshold") or {}).get("value", 0.5))


def class_names(config: dict, metrics: dict | None) -> tuple[str, str]:
    """(negative, positive) class names of a run."""
    labels = (metrics or {}).get("labels") or {}
    return (labels.get("negative", "NonCOVID"),
            labels.get("positive", config.get("positive_class", "COVID")))


def read_history(run_dir) -> pd.DataFrame:
    """Per-epoch training log (empty before the first epoch ends)."""
    try:
        return checks.read_table(Path(run_dir) / "history.csv", run_dir)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def read_predictions(run_dir) -> pd.DataFrame:
    return checks.read_table(Path(run_dir) / "predictions.csv", run_dir)




def has_model(run_dir) -> bool:
    """Whether the run can answer: its model.keras, or (a pair, core.inference.pair) its two members."""
    return (Path(run_dir) / MODEL).exists() or (Path(run_dir) / PAIR).exists()
