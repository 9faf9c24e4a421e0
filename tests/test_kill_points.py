"""SIGKILL at every phase of a run loses nothing: one run is killed at each
kill point in turn (core.training.checkpoint.KILL_AT names the point to a fresh
process), resumed each time with `python -m core resume`, and ends with the
model, history and metrics of the same run trained without a kill.

Tolerance: the two runs compute the same operations on the same inputs in
different processes. On one CPU they came out equal bit for bit; the
comparisons allow 1e-5, as oneDNN may pick other kernels for other thread
counts (the reference is trained in the test process)."""
import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from core.training import checkpoint
from core.base import paths
from core.runs import storage
from core.base import files
from core.models.resnet import load_model

# One point in each phase ("<phase> epoch 1": after the epoch's first batch);
# "finetune fitted" is the kill between fit returning and the phase's commit,
# which once lost all fine-tuning. The run has one epoch per phase (the config
# of trained_run, the reference): tests/test_checkpoint.py resumes within
# longer phases, and kills a commit half done.
KILL_POINTS = ["loading", "caching", "head epoch 1", "finetune epoch 1", "finetune fitted", "saved", "evaluating"]


def run_core(args, artifacts, kill_at=None):
    env = {**os.environ, "COVIDCT_ARTIFACTS": str(artifacts), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop(checkpoint.KILL_AT, None)
    if kill_at:
        env[checkpoint.KILL_AT] = kill_at
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=paths.PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_run_killed_at_every_phase_ends_like_an_uninterrupted_one(tmp_path, trained_run):
    reference = trained_run  # the same config, trained without a kill
    artifacts = tmp_path / "artifacts"
    run_dir = storage.new_run(files.read_json(reference / "config.json"), name="killed", runs_root=artifacts / "runs")
    for i, point in enumerate(KILL_POINTS):
        args = ["train", "--run-dir", str(run_dir)] if i == 0 else ["resume", run_dir.name]
        done = run_core(args, artifacts, kill_at=point)
        assert done.returncode == -signal.SIGKILL, f"not killed at {point!r}:\n{done.stdout}\n{done.stderr}"
        assert storage.read_status(run_dir)["state"] == "interrupted"
    done = run_core(["resume", run_dir.name], artifacts)
    assert done.returncode == 0, done.stdout + done.stderr
    assert storage.read_status(run_dir)["state"] == "completed"
    assert not (run_dir / "checkpoints").exists()  # model.keras made them useless

    # One history row per epoch, with the values of the uninterrupted run.
    history, expected = (pd.read_csv(d / "history.csv") for d in (run_dir, reference))
    assert list(history.columns) == list(expected.columns) and len(history) == len(expected)
    np.testing.assert_allclose(history.to_numpy(float), expected.to_numpy(float), rtol=1e-5, atol=1e-5)
    # The same model, predictions and metrics.
    for got, wanted in zip(load_model(run_dir / "model.keras").get_weights(),
                           load_model(reference / "model.keras").get_weights()):
        np.testing.assert_allclose(got, wanted, rtol=1e-5, atol=1e-5)
    predictions, expected = (storage.read_predictions(d) for d in (run_dir, reference))
    assert predictions[["path", "y_true", "split"]].equals(expected[["path", "y_true", "split"]])
    np.testing.assert_allclose(predictions.prob, expected.prob, atol=1e-5)
    metrics, expected = (files.read_json(d / "metrics.json") for d in (run_dir, reference))
    for split in ("val", "test"):
        assert metrics[split]["at_threshold"]["roc_auc"] == pytest.approx(
            expected[split]["at_threshold"]["roc_auc"], abs=1e-6)
