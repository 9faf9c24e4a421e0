"""Run folders checked on read: one damaged run must not break the listing,
the app or the CLI for the others, and must not be evaluated or used.

A run is damaged when a file it needs is empty, not JSON, nested too deep,
not a regular file (or a link leading out of the run folder), fails its
schema (core.runs.schemas: config.json through TrainConfig's table, then
status, metrics, calibration, scan and out-of-distribution files), or
disagrees with the other files (a predictions.csv with fewer rows than the
metrics counted). Each problem is "<file>: <what is wrong>". A run still
training is only checked for the files it has written so far.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import stat
from pathlib import Path

import pandas as pd

from core.base import files
from core.runs import schemas
from core.runs.schemas import (CALIBRATION, CONFIG, DEPLOYED, METRICS_FILE, MODEL, OOD_FEATURES, OOD_SUMMARY,
                               PREDICTIONS, SCAN, STATUS)

PREDICTION_COLUMNS = ("path", "y_true", "prob", "split")
MAX_TABLE_BYTES = 256 * 2**20  # predictions.csv and history.csv: a row per image or epoch
JSON_FILES = (CONFIG, STATUS, METRICS_FILE, CALIBRATION, SCAN, OOD_SUMMARY)
OTHER_FILES = (PREDICTIONS, MODEL, OOD_FEATURES, "history.csv")
# The kind of each TrainConfig field, as its annotation spells it.
_KINDS = {"int": int, "float": float, "bool": bool, "str": str, "str | None": str}


class DamagedRun(ValueError):
    """A run whose files are damaged; the message is "<file>: <problem>"."""


def read_json_file(path: Path, inside=None):
    """(value, None) or (None, problem); a missing file is (None, None)."""
    try:
        value = files.parse_json(files.read_regular(path, files.MAX_JSON_BYTES, inside))
    except FileNotFoundError:
        return None, None
    except files.Refused as error:
        return None, f"{path.name}: {error}"
    except OSError as error:
        return None, f"{path.name}: cannot read ({error.strerror or error})"
    except ValueError as error:
        return None, f"{path.name}: {error}"
    if not isinstance(value, dict):
        return None, f"{path.name}: expected a JSON object, found {type(value).__name__}"
    return value, None


@functools.cache
def config_schema() -> schemas.Field:
    """config.json's schema: TrainConfig's table of settings, each with its type, range or choices."""
    from core.runs.train_config import TrainConfig

    return schemas.record({f.name: schemas.Field(_KINDS[str(f.type)], f.metadata.get("range"),
                                                 f.metadata.get("choices"), null=str(f.type) == "str | None")
                           for f in dataclasses.fields(TrainConfig)})


def config_problems(config: dict) -> tuple[dict, list[str]]:
    """(the settings that pass, problems): types and values from TrainConfig's
    table, then what depends on several settings (TrainConfig.problems, less
    what depends on this machine). Settings this version does not know are
    not a problem: a newer version may have written them."""
    from core.runs.train_config import TrainConfig

    clean, found = schemas.validate(config, config_schema(), CONFIG)
    if found:
        return clean, found
    known = {name: value for name, value in config.items() if name in config_schema().fields}
    # What depends on this machine (the data folder, devices, a multi-worker cluster's TF_CONFIG) is no damage.
    return clean, [f"{CONFIG}: {problem}" for problem in TrainConfig(**known).problems(here=False)]


def read_file(folder: Path, name: str) -> tuple[dict | None, list[str]]:
    """(the file with its failing fields left out, problems) of one JSON file
    of a run (or the deployed record); (None, []) when it is missing."""
    value, problem = read_json_file(folder / name, inside=folder)
    if problem or value is None:
        return None, [problem] if problem else []
    if name == CONFIG:
        return config_problems(value)
    clean, found = schemas.validate(value, schemas.SCHEMAS[name], name)
    return clean, found + (schemas.deployed_problems(value) if name == DEPLOYED and not found else [])


def read_valid(path) -> dict | None:
    """A run file read and validated on its schema; None when it is missing;
    DamagedRun naming the file and the field when it fails."""
    path = Path(path)
    value, found = read_file(path.parent, path.name)
    if found:
        raise DamagedRun(f"{path.parent / found[0]}")
    return value


def read_table(path: Path, inside=None) -> pd.DataFrame:
    """A CSV file of a run, read within MAX_TABLE_BYTES (a regular file, inside the run folder)."""
    import io

    return pd.read_csv(io.BytesIO(files.read_regular(path, MAX_TABLE_BYTES, inside)))


def predictions_problems(path: Path, metrics: dict | None) -> list[str]:
    """predictions.csv: its columns and values, and as many rows per split as
    the metrics counted."""
    try:
        frame = read_table(path, path.parent)
    except pd.errors.EmptyDataError:
        return [f"{PREDICTIONS}: empty file"]
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as error:
        return [f"{PREDICTIONS}: not a readable CSV table ({str(error).strip()})"]
    missing = [c for c in PREDICTION_COLUMNS if c not in frame]
    if missing:
        return [f"{PREDICTIONS}: missing column(s) {', '.join(missing)}"]
    prob = pd.to_numeric(frame["prob"], errors="coerce")
    if prob.isna().any() or not prob.between(0, 1).all():
        return [f"{PREDICTIONS}: prob must be numbers between 0 and 1"]
    if not frame["y_true"].isin([0, 1]).all():
        return [f"{PREDICTIONS}: y_true must be 0 or 1"]
    if not frame["split"].isin(["train", "val", "test"]).all():
        return [f"{PREDICTIONS}: split must be train, val or test"]
    found = []
    for split in ("val", "test"):
        counted = ((metrics or {}).get(split) or {}).get("at_0.5", {}).get("n")
        rows = int((frame["split"] == split).sum())
        if isinstance(counted, int) and counted != rows:
            found.append(f"{PREDICTIONS}: {rows} {split} rows, but {METRICS_FILE} counted {counted}")
    return found


def _stamp(run_dir: Path) -> tuple:
    """What changes when a file of the run changes: its names, sizes and times."""
    stamps = []
    for name in (*JSON_FILES, *OTHER_FILES):
        try:
            info = (run_dir / name).stat()
            stamps.append((name, info.st_size, info.st_mtime_ns))
        except OSError:
            stamps.append((name, None, None))
    return tuple(stamps)


def check_run(run_dir) -> dict:
    """{"config", "status", "metrics", "problems"} of a run folder, each file
    read at most once; what cannot be read is {} / None, with its problem, and
    a field that fails its schema is left out."""
    run_dir = Path(run_dir)
    return _check(str(run_dir), _stamp(run_dir))


def _other_file_problem(run_dir: Path, name: str) -> str | None:
    """A file not parsed here (the model, the features, the tables): a regular file inside the run folder."""
    path = run_dir / name
    if files.outside(path, run_dir):
        return f"{name}: a link to outside the run folder"
    try:
        mode = path.stat().st_mode
    except OSError as error:
        return f"{name}: cannot read ({error.strerror})"
    return None if stat.S_ISREG(mode) else f"{name}: {files.kind_of(mode)}, not a regular file"


@functools.lru_cache(maxsize=512)
def _check(run_path: str, stamp: tuple) -> dict:
    """Cached on the files' sizes and times: the app lists every run on every
    rerun, and a run's files do not change once it is done."""
    run_dir = Path(run_path)
    problems, read = [], {}
    for name in JSON_FILES:
        read[name], found = read_file(run_dir, name)
        problems += found
    if read[CONFIG] is None and not any(p.startswith(CONFIG) for p in problems):
        problems.append(f"{CONFIG}: missing")
    present = [name for name in OTHER_FILES if os.path.lexists(run_dir / name)]
    problems += [p for p in (_other_file_problem(run_dir, name) for name in present) if p]
    state = (read[STATUS] or {}).get("state")
    metrics = read[METRICS_FILE]
    if state == "completed":  # evaluated: what evaluation wrote must be there and agree
        if PREDICTIONS not in present:
            problems.append(f"{PREDICTIONS}: missing in a completed run")
        if metrics is None and not any(p.startswith(METRICS_FILE) for p in problems):
            problems.append(f"{METRICS_FILE}: missing in a completed run")
    if state != "running" and PREDICTIONS in present and not any(p.startswith(PREDICTIONS) for p in problems):
        problems += predictions_problems(run_dir / PREDICTIONS, metrics)
    if state == "completed" and MODEL in present and not any(p.startswith(MODEL) for p in problems) \
            and (run_dir / MODEL).stat().st_size == 0:
        problems.append(f"{MODEL}: empty file")
    return {"config": read[CONFIG] or {}, "status": read[STATUS], "metrics": metrics, "problems": problems}


def require_intact(run_dir) -> Path:
    """The run folder, or DamagedRun naming its first damaged file."""
    run_dir = Path(run_dir)
    problems = check_run(run_dir)["problems"]
    if problems:
        name, problem = problems[0].split(": ", 1)
        raise DamagedRun(f"{run_dir / name}: {problem}")
    return run_dir
