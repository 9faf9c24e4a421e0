"""Hyperparameter studies: one Optuna SQLite file each under
artifacts/studies/, opened, listed and read back (their trials, the best
one), and the best trial's config promoted to the training default."""
from __future__ import annotations

import functools
import socket
import time
import warnings
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import optuna
import pandas as pd
import sqlalchemy
from optuna.trial import TrialState

from core.base import files, paths
from core.runs.storage import pid_alive
from core.runs.train_config import TrainConfig, recipe_of
from core.runs.promoted import load_default_config
from core.training.search_space import make_space, settings




FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# Median rule: nothing is pruned before 5 trials have finished, nor before a trial's 3rd epoch.
PRUNE_STARTUP_TRIALS, PRUNE_WARMUP_EPOCHS = 5, 3
HOST = socket.gethostname()  # a trial's worker is known by host and pid


def check_study_name(name: str) -> str:
    """Study names become file names: refuse anything that could leave studies/."""
    return files.check_name(name, "study name", max_length=64)


def study_path(name: str) -> Path:
    return paths.studies_dir() / f"{check_study_name(name)}.db"


def log_path(name: str) -> Path:
    return paths.studies_dir() / f"{check_study_name(name)}.log"


def worker_path(name: str) -> Path:
    """The file naming a study's background worker (core.jobs.background.launch_search)."""
    return paths.studies_dir() / f"{check_study_name(name)}.worker.json"


def list_studies() -> list[str]:
    folder = paths.studies_dir()
    return sorted(p.stem for p in folder.glob("*.db")) if folder.is_dir() else []


def storage_url(name: str, url: str | None = None) -> str:
    """`url` (a database server, for workers on several machines), else the study's SQLite file."""
    if url:
        return url
    study_path(name).parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{study_path(name)}"


@functools.lru_cache(maxsize=16)
def _storage(url: str) -> optuna.storages.RDBStorage:
    """SQLite waits up to 30 s for another worker's write instead of failing
    with "database is locked". The heartbeat lets a worker see that a trial's
    worker on another machine died (on this one, its process id tells at once)."""
    engine_kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {}
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                  heartbeat_interval=HEARTBEAT_SECONDS,
                                                  grace_period=5 * HEARTBEAT_SECONDS)
        except sqlalchemy.exc.SQLAlchemyError:
            # Two processes making a new database's tables at once: one of
            # them loses; the tables are there when it tries again.
            if attempt == 2:
                raise
            time.sleep(1)


def load_study(name: str, storage: str | None = None) -> optuna.Study:
    """An existing study, to read it (ValueError when there is none)."""
    if not storage and not study_path(name).exists():
        raise ValueError(f"no study named {name!r} in {paths.studies_dir()}")
    try:
        return optuna.load_study(study_name=name, storage=_storage(storage_url(name, storage)))
    except KeyError:
        raise ValueError(f"no study named {name!r} in {storage or study_path(name)}") from None


def open_study(name: str, base: dict | None = None, space: dict | None = None, storage: str | None = None,
               pruner=None, seed: int | None = None) -> optuna.Study:
    """Create a study, or load one to resume it or join it as another worker.

    `base`: settings fixed for every trial (the others are the defaults); a
    parameter whose setting is fixed leaves the search. `space`: changes to
    the default space (see make_space). A new study stores both; for an
    existing one, what is given must agree with what it stores, and what is
    left out comes from it. `seed` None gives each worker its own draws, so
    workers sharing a study do not propose the same settings."""
    check_study_name(name)
    base = dict(base or {})
    # A new study's settings and space are checked before any file is made.
    definition = None if _exists(name, storage) else _definition(base, space)
    study = optuna.create_study(
        study_name=name, storage=_storage(storage_url(name, storage)), direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),  # constant liar: workers avoid each other's running trials
        pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP_TRIALS,
                                                     n_warmup_steps=PRUNE_WARMUP_EPOCHS))
    stored = study.user_attrs
    if "base" not in stored:
        for key, value in (definition or _definition(base, space)).items():
            study.set_user_attr(key, value)
        return study

    changed = [f"{key} {stored['base'].get(key)!r} (not {value!r})" for key, value in base.items()
               if stored["base"].get(key) != value]
    if changed:
        raise ValueError(f"study {name!r} was created with {', '.join(changed)}: give the same settings, "
                         "or none to use the study's")
    if space is not None and make_space(space, TrainConfig.from_dict(stored["base"]), fixed=base) != stored["space"]:
        raise ValueError(f"study {name!r} was created with another search space ({stored['space']}): "
                         "give the same one, or none to use the study's")
    return study


def _exists(name: str, storage: str | None) -> bool:
    if not storage and not study_path(name).exists():
        return False
    return name in optuna.get_all_study_names(storage=_storage(storage_url(name, storage)))


def _definition(base: dict, space: dict | None) -> dict:
    """What a new study stores: its full base config and its checked space."""
    config = TrainConfig.from_dict({**asdict(load_default_config()), **base})
    if config.strategy == "multiworker":  # each search worker runs its own trial
        raise ValueError("a search cannot train with strategy 'multiworker': every process of the cluster "
                         "would have to run the same trial; use 'default' or 'mirrored'")
    config.validate()
    return {"base": asdict(config), "space": make_space(space, config, fixed=base)}


def fail_dead_trials(study: optuna.Study) -> None:
    """Mark failed the trials left running by a worker that died: at once for
    a worker of this machine (its process is gone), after the heartbeat's
    grace period for one elsewhere."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host") == HOST and not pid_alive(worker.get("pid"), worker.get("pid_start")):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def remaining(study: optuna.Study, n_trials: int) -> int:
    """Trials still to start for the study to reach `n_trials` finished ones,
    counting those in progress in any worker."""
    fail_dead_trials(study)
    return n_trials - len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))


def describe(trial: optuna.trial.FrozenTrial) -> str:
    """One line: trial number, state, validation ROC-AUC (or why not), parameters, run."""
    outcome = f"val ROC-AUC {trial.value:.4f}" if trial.value is not None else trial.user_attrs.get("note", "")
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    return f"trial {trial.number} {trial.state.name.lower()}: {outcome} [{params}] run {trial.user_attrs.get('run')}"


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, validation ROC-AUC, the sampled parameters,
    its run, the worker that ran it, its duration and a note (why it was
    pruned or failed)."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        worker = trial.user_attrs.get("worker") or {}
        ended = trial.datetime_complete or (datetime.now() if trial.state == TrialState.RUNNING else None)
        note = trial.user_attrs.get("note")
        if trial.state == TrialState.FAIL and not note:
            note = "its worker died"
        rows.append({"trial": trial.number, "state": trial.state.name.lower(), "val_roc_auc": trial.value,
                     **trial.params, "run": trial.user_attrs.get("run"),
                     "worker": f"{worker['host']}:{worker['pid']}" if worker else None,
                     "seconds": round((ended - trial.datetime_start).total_seconds())
                     if ended and trial.datetime_start else None,
                     "note": note or ""})
    return pd.DataFrame(rows, columns=None if rows else ["trial", "state", "val_roc_auc", "run", "worker",
                                                         "seconds", "note"])


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The completed trial with the highest validation ROC-AUC, None before any."""
    try:
        return study.best_trial
    except ValueError:
        return None


def promote_best(name: str, storage: str | None = None) -> dict:
    """Make the best trial's config the training default (`python -m core
    train` without options, the Train page's form); returns what was written
    to artifacts/default_config.json."""
    study = load_study(name, storage)
    best = best_trial(study)
    if best is None:
        raise ValueError(f"study {name!r} has no completed trial yet")
    config = asdict(TrainConfig.from_dict({**study.user_attrs["base"], **settings(best.params)}))
    promoted = {"config": recipe_of(config),
                "promoted_from": {"study": name, "trial": best.number, "run": best.user_attrs.get("run"),
                                  "val_roc_auc": best.value,
                                  "at": datetime.now(UTC).isoformat(timespec="seconds")}}
    paths.default_config_path().parent.mkdir(parents=True, exist_ok=True)
    files.write_json(paths.default_config_path(), promoted)
    return promoted


HEARTBEAT_SECONDS = 60
