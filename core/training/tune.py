"""Hyperparameter search over TrainConfig with Optuna, scored on validation ROC-AUC only.

A study is one SQLite file, artifacts/studies/<name>.db (Optuna's RDB
storage), so a search can be stopped and resumed, and several worker
processes can share it: each asks the study for the next trial. Every trial
trains a normal run folder, <date>-<study>-t<number>, so the Evaluate page
compares trials like any other run. A trial whose validation AUC trails the
median of earlier trials at the same epoch is pruned (stopped early).

The search space is data (core.training.search_space). The settings that are not searched come from
the study's base config, stored in the study when it is created, so that a
resumed search or a second worker trains with the same ones.
"""
from __future__ import annotations

import functools
import os
import re
import socket
import time
import warnings
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import keras
import optuna
import pandas as pd
import sqlalchemy
from optuna.trial import TrialState

from core.runs import lock
from core.base import paths
from core.runs import storage
from core.base import files
from core.runs.train_config import TrainConfig, load_default_config
from core.training.search_space import make_space, settings, suggest
from core.training.fit import train

# Where the data is, how this machine trains and which cross-validation fold a
# run validates on: not part of a promoted default.
MACHINE_SETTINGS = ("data_dir", "strategy", "cv_folds", "cv_fold")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Median rule: nothing is pruned before 5 trials have finished, nor before a trial's 3rd epoch.
PRUNE_STARTUP_TRIALS, PRUNE_WARMUP_EPOCHS = 5, 3
MAX_FAILURES_IN_A_ROW = 3
HEARTBEAT_SECONDS = 60
HOST = socket.gethostname()
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


# ---------------------------------------------------------------------------
# Studies
# ---------------------------------------------------------------------------

def check_study_name(name: str) -> str:
    """Study names become file names: refuse anything that could leave studies/."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ValueError(f"invalid study name {name!r}: use letters, digits, '.', '_' and '-' only")
    return name


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
        if worker.get("host") == HOST and not storage.pid_alive(worker.get("pid")):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def remaining(study: optuna.Study, n_trials: int) -> int:
    """Trials still to start for the study to reach `n_trials` finished ones,
    counting those in progress in any worker."""
    fail_dead_trials(study)
    return n_trials - len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))


# ---------------------------------------------------------------------------
# Running trials
# ---------------------------------------------------------------------------

class Pruned(optuna.TrialPruned):
    """A trial stopped by the pruner; train() marks its run with `run_state`."""
    run_state = "pruned"


class PruneOnValAuc(keras.callbacks.Callback):
    """Reports each epoch's validation AUC to the trial and stops a poor trial.
    The step counts epochs over both phases (head, then fine-tuning), so the
    pruner compares trials at the same point of their training."""

    def __init__(self, trial: optuna.Trial):
        super().__init__()
        self.trial, self.step = trial, 0

    def on_epoch_end(self, epoch, logs=None):
        self.step += 1
        value = (logs or {}).get("val_auc")
        if value is None:
            return
        self.trial.report(float(value), self.step)
        if self.trial.should_prune():
            raise Pruned(f"pruned at epoch {self.step}: validation AUC {float(value):.3f} "
                                     "below the median of earlier trials")


def validation_auc(run_dir: Path) -> float:
    """A run's validation ROC-AUC (the search's score; the test split is never looked at)."""
    val = (files.read_json(Path(run_dir) / "metrics.json", {}).get("val") or {}).get("at_0.5") or {}
    if val.get("roc_auc") is None:
        raise ValueError(f"run {Path(run_dir).name} has no validation ROC-AUC (one class only?)")
    return float(val["roc_auc"])


def run_search(name: str, n_trials: int, base: dict | None = None, space: dict | None = None,
               timeout: float | None = None, storage: str | None = None, runs_root=None, report=print,
               pruner=None, seed: int | None = None) -> optuna.Study:
    """Run trials until the study holds `n_trials` finished (completed or
    pruned) trials, counting earlier sessions and other workers: re-running a
    stopped search runs only the missing trials. A failed trial (out of
    memory, say) is recorded and the search goes on, unless
    MAX_FAILURES_IN_A_ROW fail in a row. `timeout`: no new trial after that
    many seconds. Trains without the training lock (docs/how-a-run-works.md)."""
    if n_trials < 1:
        raise ValueError(f"trials {n_trials} must be at least 1")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout {timeout} must be positive")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the trials are reported below
    study = open_study(name, base, space, storage, pruner, seed)
    fixed, searched = study.user_attrs["base"], study.user_attrs["space"]
    failures = []

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", {"host": HOST, "pid": os.getpid()})
        try:
            config = TrainConfig.from_dict({**fixed, **settings(suggest(trial, searched))}).validate()
            run_dir = storage.new_run(asdict(config), name=f"{name}-t{trial.number}", runs_root=runs_root)
            storage.set_status(run_dir, "running", study=name, trial=trial.number)
            trial.set_user_attr("run", run_dir.name)
            train(config, run_dir=run_dir, report=lambda line: report(f"[trial {trial.number}] {line}"),
                  callbacks=[PruneOnValAuc(trial)], exclusive=False)
            return validation_auc(run_dir)
        except optuna.TrialPruned as pruned:
            trial.set_user_attr("note", str(pruned))
            raise
        except BaseException as error:  # KeyboardInterrupt too: Stop, Cancel or Ctrl-C
            trial.set_user_attr("note", f"{type(error).__name__}: {error}")
            raise
        finally:
            keras.backend.clear_session()  # free this trial's model before the next one

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        report(describe(trial))
        if trial.state == TrialState.FAIL:
            failures.append(trial)
        else:
            failures.clear()
        if len(failures) >= MAX_FAILURES_IN_A_ROW or remaining(study, n_trials) <= 0:
            study.stop()

    if remaining(study, n_trials) <= 0:
        report(f"study {name}: {n_trials} trials already finished or running; nothing to do")
        return study
    # SIGTERM (the app's Stop) raises KeyboardInterrupt between trials too, so
    # Optuna records the trial in progress as failed and the worker ends. During
    # a trial, train() has its own handler, which also marks the run cancelled.
    with lock.sigterm_raises(KeyboardInterrupt):
        study.optimize(objective, timeout=timeout, callbacks=[after_trial], catch=(Exception,))
    if len(failures) >= MAX_FAILURES_IN_A_ROW:
        raise RuntimeError(f"study {name}: {len(failures)} trials failed in a row, the last with "
                           f"{failures[-1].user_attrs.get('note', 'no reason recorded')}")
    return study


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# The promoted default config
# ---------------------------------------------------------------------------

def promote_best(name: str, storage: str | None = None) -> dict:
    """Make the best trial's config the training default (`python -m core
    train` without options, the Train page's form); returns what was written
    to artifacts/default_config.json."""
    study = load_study(name, storage)
    best = best_trial(study)
    if best is None:
        raise ValueError(f"study {name!r} has no completed trial yet")
    config = asdict(TrainConfig.from_dict({**study.user_attrs["base"], **settings(best.params)}))
    promoted = {"config": {k: v for k, v in config.items() if k not in MACHINE_SETTINGS},
                "promoted_from": {"study": name, "trial": best.number, "run": best.user_attrs.get("run"),
                                  "val_roc_auc": best.value,
                                  "at": datetime.now(UTC).isoformat(timespec="seconds")}}
    paths.default_config_path().parent.mkdir(parents=True, exist_ok=True)
    files.write_json(paths.default_config_path(), promoted)
    return promoted
