"""Run folders checked on read: one damaged run must not break the listing,
the app or the CLI for the others, and must not be evaluated or used.

A run is damaged when a file it needs is empty, not JSON, of the wrong
shape, holds impossible values, or disagrees with the other files (a
predictions.csv with fewer rows than the metrics counted). Each problem is
"<file>: <what is wrong>". A run still training is only checked for its
config.json and status.json: its other files are being written.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import pandas as pd

from core.runs import storage

PREDICTION_COLUMNS = ("path", "y_true", "prob", "split")
# The type of each TrainConfig field, as its annotation spells it.
_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "str | None": (str, type(None))}


class DamagedRun(ValueError):
    """A run whose files are damaged; the message is "<file>: <problem>"."""


def read_json_file(path: Path):
    """(value, None) or (None, problem); a missing file is (None, None)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as error:
        return None, f"{path.name}: cannot read ({error})"
    if not text.strip():
        return None, f"{path.name}: empty file"
    try:
        value = json.loads(text)
    except ValueError as error:
        return None, f"{path.name}: not JSON ({error})"
    if not isinstance(value, dict):
        return None, f"{path.name}: expected a JSON object, found {type(value).__name__}"
    return value, None


def config_problems(config: dict) -> list[str]:
    """Settings of the wrong type or with impossible values (TrainConfig.problems,
    less those that depend on this machine). Settings this version does not
    know are not a problem: a newer version may have written them."""
    from core.runs.train_config import TrainConfig

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    found = []
    for name, value in config.items():
        types = _TYPES.get(str(fields[name].type)) if name in fields else None
        if types and (not isinstance(value, types) or (bool not in types and isinstance(value, bool))):
            found.append(f"config.json: {name} {value!r} is not a {fields[name].type}")
    if found:
        return found
    known = {name: value for name, value in config.items() if name in fields}
    # What depends on this machine (the data folder, devices, a multi-worker cluster's TF_CONFIG) is no damage.
    return [f"config.json: {problem}" for problem in TrainConfig(**known).problems(here=False)]


def status_problems(status: dict) -> list[str]:
    if status.get("state") not in storage.STATES:
        return [f"status.json: unknown state {status.get('state')!r}"]
    return []


def metrics_problems(metrics: dict) -> list[str]:
    threshold = metrics.get("threshold", {"value": 0.5})  # absent: 0.5 (storage.decision_threshold)
    threshold = threshold.get("value") if isinstance(threshold, dict) else None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        return [f"metrics.json: the decision threshold must be a number between 0 and 1, found {threshold!r}"]
    for split in ("val", "test"):
        for at in ("at_0.5", "at_threshold"):
            if split in metrics and not isinstance((metrics[split] or {}).get(at), dict):
                return [f"metrics.json: {split}.{at} is missing or not an object"]
    return []


def predictions_problems(path: Path, metrics: dict | None) -> list[str]:
    """predictions.csv: its columns and values, and as many rows per split as
    the metrics counted."""
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return ["predictions.csv: empty file"]
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as error:
        return [f"predictions.csv: not a readable CSV table ({str(error).strip()})"]
    missing = [c for c in PREDICTION_COLUMNS if c not in frame]
    if missing:
        return [f"predictions.csv: missing column(s) {', '.join(missing)}"]
    prob = pd.to_numeric(frame["prob"], errors="coerce")
    if prob.isna().any() or not prob.between(0, 1).all():
        return ["predictions.csv: prob must be numbers between 0 and 1"]
    if not frame["y_true"].isin([0, 1]).all():
        return ["predictions.csv: y_true must be 0 or 1"]
    if not frame["split"].isin(["train", "val", "test"]).all():
        return ["predictions.csv: split must be train, val or test"]
    found = []
    for split in ("val", "test"):
        counted = ((metrics or {}).get(split) or {}).get("at_0.5", {}).get("n")
        rows = int((frame["split"] == split).sum())
        if isinstance(counted, int) and counted != rows:
            found.append(f"predictions.csv: {rows} {split} rows, but metrics.json counted {counted}")
    return found


def _stamp(run_dir: Path) -> tuple:
    """What changes when a file of the run changes: its names, sizes and times."""
    stamps = []
    for name in ("config.json", "status.json", "metrics.json", "predictions.csv", "model.keras"):
        try:
            info = (run_dir / name).stat()
            stamps.append((name, info.st_size, info.st_mtime_ns))
        except OSError:
            stamps.append((name, None, None))
    return tuple(stamps)


def check_run(run_dir) -> dict:
    """{"config", "status", "metrics", "problems"} of a run folder, each file
    read at most once; what cannot be read is {} / None, with its problem."""
    run_dir = Path(run_dir)
    return _check(str(run_dir), _stamp(run_dir))


@functools.lru_cache(maxsize=512)
def _check(run_path: str, stamp: tuple) -> dict:
    """Cached on the files' sizes and times: the app lists every run on every
    rerun, and a run's files do not change once it is done."""
    run_dir = Path(run_path)
    problems = []
    config, problem = read_json_file(run_dir / "config.json")
    problems += [problem] if problem else []
    if config is None and not problem:
        problems.append("config.json: missing")
    problems += config_problems(config) if config else []

    status, problem = read_json_file(run_dir / "status.json")
    problems += [problem] if problem else status_problems(status) if status else []
    metrics, problem = read_json_file(run_dir / "metrics.json")
    problems += [problem] if problem else metrics_problems(metrics) if metrics is not None else []

    state = (status or {}).get("state")
    if state == "completed":  # evaluated: what evaluation wrote must be there and agree
        if not (run_dir / "predictions.csv").exists():
            problems.append("predictions.csv: missing in a completed run")
        if metrics is None and not any(p.startswith("metrics.json") for p in problems):
            problems.append("metrics.json: missing in a completed run")
    if state != "running" and (run_dir / "predictions.csv").exists():
        problems += predictions_problems(run_dir / "predictions.csv", metrics)
    if state == "completed" and (run_dir / "model.keras").exists() and (run_dir / "model.keras").stat().st_size == 0:
        problems.append("model.keras: empty file")
    return {"config": config or {}, "status": status, "metrics": metrics if isinstance(metrics, dict) else None,
            "problems": problems}


def require_intact(run_dir) -> Path:
    """The run folder, or DamagedRun naming its first damaged file."""
    run_dir = Path(run_dir)
    problems = check_run(run_dir)["problems"]
    if problems:
        name, problem = problems[0].split(": ", 1)
        raise DamagedRun(f"{run_dir / name}: {problem}")
    return run_dir

