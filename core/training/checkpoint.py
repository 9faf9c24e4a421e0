"""Crash-safe training: the phases of a run, and what a killed run resumes from.

A run goes through six phases. Each commits its result in one atomic step
before the next starts, so a process killed at any point (SIGKILL, power
loss, the machine stopped) resumes with `python -m core resume RUN` and ends
with the model, history and metrics an uninterrupted run would have made:

  phase       makes                                 committed by                        on resume
  loading     the decoded, resized images           each image cache entry's rename     kept: only missing entries decoded
  caching     the frozen stages' activations        nothing (a folder in the run)       redone, same values (seeded)
  head        the head warm-up, epoch by epoch      checkpoints/head/latest.json        continues after its last
  finetune    fine-tuning, epoch by epoch           checkpoints/finetune/latest.json    committed epoch, or skipped
  saving      model.keras                           the rename of model.keras           skipped
  evaluating  predictions.csv, metrics.json         status.json's state "completed"     redone

An epoch checkpoint is a folder (the trained weights with the optimizer's
state, which holds the learning rate; early stopping's best weights; the
dropout layers' random state; the training batches' shuffle state) and
latest.json, which names that folder and holds the callbacks' counters (early
stopping's best value and patience used, ReduceLROnPlateau's, the best
checkpoint's score) and how many rows of history.csv belong to the committed
epochs. latest.json is replaced by a rename, so it names either the previous
complete checkpoint or the new one, never half of one. A phase ends with one
more commit, marked finished, holding the phase's final weights (early
stopping's best). A kill between `fit` returning and that commit resumes from
the last epoch checkpoint with no epoch left to run, so the phase ends again
the same way: nothing is redone.

Resuming truncates history.csv to the committed rows, so it holds one row per
epoch whatever was killed in the middle of an epoch.
"""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import keras
import numpy as np

from core.base import files

# Test hook: a process whose $COVIDCT_KILL_AT names a kill point sends itself
# SIGKILL there (tests/test_kill_points.py). Points: "loading", "caching",
# "<phase> epoch <n>" (after the first batch of that epoch), "<phase> <folder>
# written" (a checkpoint folder complete, latest.json not yet switched),
# "<phase> fitted" (fit returned, phase not committed), "saved" (model.keras
# written), "evaluating" (predictions.csv written, metrics.json not).
KILL_AT = "COVIDCT_KILL_AT"

# What each Keras callback keeps between epochs besides the model (Keras 3.15).
# Their on_train_begin resets these, so a resumed fit puts them back after it.
CALLBACK_COUNTERS = {
    keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
    keras.callbacks.EarlyStopping: ("wait", "best", "best_epoch", "stopped_epoch"),
    keras.callbacks.SwapEMAWeights: ("_ema_weights_in_model",),
}


def kill_point(name: str) -> None:
    if os.environ.get(KILL_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def phase_dir(run_dir, phase: str) -> Path:
    return Path(run_dir) / "checkpoints" / phase


def committed(run_dir, phase: str) -> dict | None:
    """The phase's last commit (latest.json), None before its first epoch ends."""
    return files.read_json(phase_dir(run_dir, phase) / "latest.json")


def is_finished(run_dir, phase: str) -> bool:
    return bool((committed(run_dir, phase) or {}).get("finished"))


def history_rows(run_dir, phase: str, rows_before: int) -> int:
    """Rows of history.csv committed by the end of the phase's last committed
    epoch (rows_before: those of earlier phases, when it has none yet)."""
    saved = committed(run_dir, phase)
    return saved["history_rows"] if saved else rows_before


def truncate_history(run_dir, rows: int) -> None:
    """Keep the header and the first `rows` rows of history.csv: rows logged
    by epochs that were not committed (the process was killed before their
    checkpoint) are logged again when those epochs run again."""
    path = Path(run_dir) / "history.csv"
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    if rows == 0:
        path.unlink()  # CSVLogger writes the header again
    elif len(lines) != rows + 1 or not lines[-1].endswith("\n"):
        kept = lines[:rows + 1]
        files.atomic_write(path, lambda handle: handle.writelines(kept))


def _random_states(model: keras.Model) -> list:
    """Variables saved by nothing else: the seed generators' states (dropout)."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def _random_arrays(model: keras.Model) -> dict:
    return {f"random_{i}": np.asarray(v) for i, v in enumerate(_random_states(model))}


def _restore_random(model: keras.Model, arrays) -> None:
    for variable, value in zip(_random_states(model), _numbered(arrays, "random")):
        variable.assign(value)


def _plain(value):
    """A callback counter as JSON (NumPy scalars -> Python numbers)."""
    return value.item() if isinstance(value, np.generic) else value


def _write(run_dir, phase: str, name: str, model: keras.Model, state: dict, arrays: dict) -> None:
    """One commit: a complete folder first, then latest.json switched to it by
    a rename, then the folders it replaced removed."""
    folder_root = phase_dir(run_dir, phase)
    folder_root.mkdir(parents=True, exist_ok=True)
    previous = (committed(run_dir, phase) or {}).get("folder")
    if name == previous:
        raise ValueError(f"{folder_root / name}: already the committed checkpoint")
    staging = folder_root / f".{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    model.save_weights(staging / "model.weights.h5")  # with the optimizer's variables, if compiled
    np.savez(staging / "arrays.npz", **arrays)
    for path in staging.iterdir():  # on disk before latest.json names them
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    shutil.rmtree(folder_root / name, ignore_errors=True)  # left by a kill before its commit
    staging.rename(folder_root / name)
    kill_point(f"{phase} {name} written")
    files.write_json(folder_root / "latest.json", {**state, "folder": name})
    for stale in folder_root.iterdir():
        if stale.is_dir() and stale.name != name:
            shutil.rmtree(stale, ignore_errors=True)


def _batches_state(batches) -> tuple[dict | None, dict]:
    """The shuffle state of ActivationBatches (core.training.frozen_cache): its generator and
    this epoch's order. None for batches without one (tf.data, validation)."""
    if getattr(batches, "rng", None) is None:
        return None, {}
    return batches.rng.bit_generator.state, {"order": batches.order}


def _restore_batches(batches, state: dict | None, arrays) -> None:
    if state is not None and getattr(batches, "rng", None) is not None:
        batches.rng.bit_generator.state = state
        batches.order = arrays["order"]


def commit_phase(run_dir, phase: str, model: keras.Model, batches=None) -> None:
    """Mark the phase finished with its final weights (the whole model) and
    the training batches' shuffle state, in one commit."""
    saved = committed(run_dir, phase) or {}
    data_state, arrays = _batches_state(batches)
    _write(run_dir, phase, "final", model,
           {"finished": True, "epoch": saved.get("epoch"), "history_rows": saved.get("history_rows", 0),
            "batches": data_state}, {**_random_arrays(model), **arrays})


def restore_phase(run_dir, phase: str, model: keras.Model, batches=None) -> None:
    """Load a finished phase's weights into the whole model, and put the
    training batches where the phase left them."""
    saved = committed(run_dir, phase)
    folder = phase_dir(run_dir, phase) / saved["folder"]
    model.load_weights(folder / "model.weights.h5")
    with np.load(folder / "arrays.npz") as arrays:
        _restore_random(model, arrays)
        _restore_batches(batches, saved.get("batches"), arrays)


class EpochCheckpoint(keras.callbacks.Callback):
    """Commits the training state at the end of every epoch, and restores the
    last commit when fit starts again; BackupAndRestore's job, plus what it
    leaves out (the callbacks' counters, the random and shuffle state) and
    with one atomic commit instead of two files written in turn.

    Goes last in the callback list: its on_epoch_end sees the epoch's final
    counters, and its on_train_begin runs after the others reset theirs."""

    def __init__(self, run_dir, phase: str, rows_before: int, batches=None, callbacks=()):
        super().__init__()
        self.run_dir, self.phase, self.rows_before, self.batches = Path(run_dir), phase, rows_before, batches
        self.watched = [c for c in callbacks if type(c) in CALLBACK_COUNTERS]

    def on_train_begin(self, logs=None):
        # Keras keeps a restored start epoch on the model, across fit calls.
        self.model._initial_epoch = None
        saved = committed(self.run_dir, self.phase)
        if saved is None:
            return
        folder = phase_dir(self.run_dir, self.phase) / saved["folder"]
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(folder / "model.weights.h5")
        with np.load(folder / "arrays.npz") as arrays:
            _restore_random(self.model, arrays)
            for callback, counters in zip(self.watched, saved["callbacks"]):
                callback.__dict__.update(counters)
                if isinstance(callback, keras.callbacks.EarlyStopping) and "best_weights_0" in arrays:
                    callback.best_weights = _numbered(arrays, "best_weights")
            _restore_batches(self.batches, saved.get("batches"), arrays)
        # Early stopping ended the phase: no epoch left, only its end to redo.
        self.model._initial_epoch = self.params["epochs"] if saved["stopped"] else saved["epoch"]

    def on_epoch_end(self, epoch, logs=None):
        arrays = _random_arrays(self.model)
        for callback in self.watched:
            if isinstance(callback, keras.callbacks.EarlyStopping) and callback.best_weights is not None:
                arrays.update({f"best_weights_{i}": w for i, w in enumerate(callback.best_weights)})
        data_state, data_arrays = _batches_state(self.batches)
        state = {
            "finished": False,
            "epoch": epoch + 1,
            "stopped": bool(self.model.stop_training),
            "history_rows": self.rows_before + epoch + 1,
            "callbacks": [{name: _plain(getattr(c, name)) for name in CALLBACK_COUNTERS[type(c)]}
                          for c in self.watched],
            "batches": data_state,
        }
        _write(self.run_dir, self.phase, f"epoch-{epoch + 1}", self.model, state, {**arrays, **data_arrays})

    def on_train_end(self, logs=None):
        self.model._initial_epoch = None


def _numbered(arrays, prefix: str) -> list:
    count = sum(1 for key in arrays.files if key.startswith(f"{prefix}_"))
    return [arrays[f"{prefix}_{i}"] for i in range(count)]


def describe(run_dir) -> str:
    """Where a run stands, for a resume report: "finetune epoch 3" or "nothing committed"."""
    for phase in ("finetune", "head"):
        saved = committed(run_dir, phase)
        if saved:
            return f"{phase} {'finished' if saved.get('finished') else 'epoch ' + str(saved['epoch'])}"
    return "nothing committed"

