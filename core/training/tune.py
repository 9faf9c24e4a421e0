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

import os
from dataclasses import asdict
from pathlib import Path

import keras
import optuna
from optuna.trial import TrialState

from core.runs import lock
from core.runs.storage import new_run, owner, set_status
from core.base import files
from core.runs.train_config import TrainConfig
from core.training.studies import HOST, describe, open_study, remaining
from core.training.search_space import settings, suggest
from core.training.fit import train


MAX_FAILURES_IN_A_ROW = 3


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
        trial.set_user_attr("worker", {"host": HOST, **owner(os.getpid())})
        try:
            config = TrainConfig.from_dict({**fixed, **settings(suggest(trial, searched))}).validate()
            run_dir = new_run(asdict(config), name=f"{name}-t{trial.number}", runs_root=runs_root)
            set_status(run_dir, "running", study=name, trial=trial.number)
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


