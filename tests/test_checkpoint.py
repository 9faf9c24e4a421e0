"""core.training.checkpoint in one process, on a model of one Dense layer: a fit
stopped after any epoch (or after fit returned, before its phase was
committed) and started again ends exactly where an uninterrupted fit ends:
same weights, learning rate, early stopping and best-checkpoint state, and
one history row per epoch."""
import keras
import numpy as np
import pandas as pd
import pytest

from core.training import checkpoint
from core.runs.train_config import TrainConfig
from core.training.frozen_cache import ActivationBatches
from core.training.fit import fit_phase

EPOCHS = 8


class Killed(Exception):
    pass


class KillAtEpoch(keras.callbacks.Callback):
    """Stands in for SIGKILL: stops fit during epoch `epoch` (1-based), after
    its first batch, when the epoch before it is committed and this one is not."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch:
            raise Killed


def noisy_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 8)).astype("float32")
    y = (x[:, 0] + rng.normal(scale=1.5, size=96) > 0).astype(int)
    return x, y


def fit(run_dir, extra_callbacks=()):
    """A fresh process's worth of state: new model, new batches, new callbacks."""
    x, y = noisy_problem()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dropout(0.5), keras.layers.Dense(2, activation="softmax")])
    train_batches = ActivationBatches(x[:64], y[:64], batch_size=8, epoch_size=64, seed=0)
    val_batches = ActivationBatches(x[64:], y[64:], batch_size=32)
    # A large learning rate and little patience: the learning rate is cut and early stopping waits.
    config = TrainConfig(data_dir=str(run_dir), early_stopping_patience=3, lr_patience=1)
    fit_phase(model, config, run_dir, "finetune", EPOCHS, 0.3, train_batches, val_batches, 8,
              report=lambda _: None, extra_callbacks=extra_callbacks)
    return model


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference")
    model = fit(run_dir)
    history = pd.read_csv(run_dir / "history.csv")
    saved = checkpoint.committed(run_dir, "finetune")
    # The state a resume must carry over is there to carry.
    assert float(model.optimizer.learning_rate) < 0.3  # ReduceLROnPlateau cut it
    assert saved["callbacks"][1]["wait"] > 0  # early stopping is counting
    return model, history, saved


def same_end(run_dir, model, reference):
    ref_model, ref_history, ref_saved = reference
    for got, expected in zip(model.get_weights(), ref_model.get_weights()):
        np.testing.assert_array_equal(got, expected)
    assert float(model.optimizer.learning_rate) == float(ref_model.optimizer.learning_rate)
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "history.csv"), ref_history)
    saved = checkpoint.committed(run_dir, "finetune")
    assert saved["callbacks"] == ref_saved["callbacks"] and saved["epoch"] == ref_saved["epoch"]


@pytest.mark.parametrize("kill_in_epoch", [3, 6])
def test_a_fit_killed_in_an_epoch_resumes_after_the_last_committed_one(tmp_path, reference, kill_in_epoch):
    with pytest.raises(Killed):
        fit(tmp_path, [KillAtEpoch(kill_in_epoch)])
    assert checkpoint.committed(tmp_path, "finetune")["epoch"] == kill_in_epoch - 1
    assert_resumes_the_same(tmp_path, kill_in_epoch, reference)


def test_a_commit_killed_half_done_leaves_the_one_before(tmp_path, reference, monkeypatch):
    """Killed with epoch 4's folder written but latest.json not yet switched to it."""
    def kill_point(name):
        if name == "finetune epoch-4 written":
            raise Killed
    monkeypatch.setattr(checkpoint, "kill_point", kill_point)
    with pytest.raises(Killed):
        fit(tmp_path)
    assert checkpoint.committed(tmp_path, "finetune")["epoch"] == 3
    assert (tmp_path / "checkpoints" / "finetune" / "epoch-4").is_dir()  # complete, but not committed
    monkeypatch.undo()
    assert_resumes_the_same(tmp_path, 4, reference)


def assert_resumes_the_same(tmp_path, kill_in_epoch, reference):
    # The killed epoch's row may be logged already: a real kill can land after it.
    assert len(pd.read_csv(tmp_path / "history.csv")) in (kill_in_epoch - 1, kill_in_epoch)
    with open(tmp_path / "history.csv", "a") as history:
        history.write("99,0.5,0.5,0.5")  # half a row, as a kill mid-write leaves it
    same_end(tmp_path, fit(tmp_path), reference)


def test_a_fit_killed_after_returning_ends_the_same_without_training_again(tmp_path, reference):
    fit(tmp_path)  # returned; the caller was killed before it committed the phase
    epochs_run = []
    count = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: epochs_run.append(epoch))
    model = fit(tmp_path, [count])
    assert epochs_run == []
    same_end(tmp_path, model, reference)
