"""A training's progress, written where the app reads it, and the one place
a run notices that the user asked it to stop."""
from __future__ import annotations

import time
from pathlib import Path

import keras

from core.runs import storage
from core.runs.lock import RunCancelled
from core.training import checkpoint


class RunProgress(keras.callbacks.Callback):
    """Keeps status.json up to date, reports epochs, and stops on request.

    Cancellation is a file (`cancel` in the run folder) so the app can ask a
    training process it does not own to stop at the next batch."""

    def __init__(self, run_dir: Path, phase: str, epochs: int, steps: int, report):
        super().__init__()
        self.run_dir, self.phase, self.epochs, self.steps, self.report = run_dir, phase, epochs, steps, report
        self.epoch = 0
        self.last_write = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self._write(batch=0)

    def on_train_batch_end(self, batch, logs=None):
        if (self.run_dir / "cancel").exists():
            self.model.stop_training = True
            raise RunCancelled("cancelled by the user")
        if time.monotonic() - self.last_write > 2.0:  # don't hammer the disk
            self._write(batch=batch + 1)
        checkpoint.kill_point(f"{self.phase} epoch {self.epoch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: round(float(v), 4) for k, v in (logs or {}).items()}
        self._write(batch=self.steps, last_logs=logs)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k in
                          ("loss", "auc", "val_loss", "val_auc", "val_accuracy",
                           "evidence_outside", "val_evidence_outside"))  # the last two: evidence_penalty's
        self.report(f"[{self.phase}] epoch {epoch + 1}/{self.epochs}  {shown}")

    def _write(self, batch: int, **extra):
        self.last_write = time.monotonic()
        storage.set_status(self.run_dir, "running", phase=self.phase, epoch=self.epoch + 1,
                        epochs=self.epochs, batch=batch, steps=self.steps, **extra)
