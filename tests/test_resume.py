"""A training process killed with SIGKILL mid-run loses nothing: the run reads
as interrupted, the lock is released, and `resume` continues from the last
completed epoch instead of starting over."""
import os
import signal
import time

import pandas as pd
import pytest

from core.runs import lock
from core.runs import storage
from core.base import files
from core.runs.train_config import TrainConfig
from core.jobs.background import launch_training, resume

FINETUNE_EPOCHS = 12


def wait_for(condition, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


# Penalised, fit trains the EvidencePenalty wrapper, not the model: its checkpoints must resume too.
@pytest.mark.parametrize("penalty", [0.0, 1.0], ids=["plain", "evidence-penalty"])
def test_sigkill_then_resume_continues_from_last_epoch(tmp_path, data_dir, weights, penalty):
    runs_root = tmp_path / "runs"
    config = TrainConfig(data_dir=str(data_dir), weights=weights, input_size=32, batch_size=4,
                         max_images_per_split=8, head_epochs=1, finetune_epochs=FINETUNE_EPOCHS,
                         early_stopping_patience=FINETUNE_EPOCHS, evidence_penalty=penalty)
    run_dir = launch_training(config, name="killed", runs_root=runs_root)

    def in_third_finetune_epoch():
        status = files.read_json(run_dir / "status.json", {})
        return status.get("phase") == "finetune" and status.get("epoch", 0) >= 3
    assert wait_for(in_third_finetune_epoch), files.read_json(run_dir / "status.json")
    os.kill(files.read_json(run_dir / "status.json")["pid"], signal.SIGKILL)
    assert wait_for(lambda: storage.read_status(run_dir)["state"] == "interrupted", timeout=10)
    assert lock.active_training(runs_root) is None  # the dead process's lock is stale

    rows_before = len(storage.read_history(run_dir))
    assert rows_before >= 3  # head epoch + at least two fine-tuning epochs
    resume(run_dir, report=lambda line: None)

    assert storage.read_status(run_dir)["state"] == "completed"
    history = pd.read_csv(run_dir / "history.csv")
    # Restarting the phase would log 1 + (rows_before - 1) + 12 rows; resuming
    # logs each epoch once (core.training.checkpoint truncates rows of uncommitted epochs).
    assert len(history) == 1 + FINETUNE_EPOCHS and list(history.epoch) == [0, *range(FINETUNE_EPOCHS)]
    assert (run_dir / "model.keras").exists() and (run_dir / "metrics.json").exists()
    # The resumed epochs were penalised as the first ones were: each logs the share outside the lungs.
    assert ("val_evidence_outside" in history and history.val_evidence_outside.notna().all()) == bool(penalty)


def test_completed_run_is_not_resumed(trained_run):
    import pytest

    with pytest.raises(ValueError, match="completed"):
        resume(trained_run)
