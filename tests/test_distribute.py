"""Training under tf.distribute strategies on this CPU machine: the CPU split
into 2 logical devices under MirroredStrategy, and 2 worker processes on
localhost under MultiWorkerMirroredStrategy, each checked against one device
training on the same global batch at the same learning rate."""
import json
import os
import socket
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from core.base import machine
from core.training import distribute
from core.base import paths
from core.runs import catalogue
from core.runs import storage
from core.runs.train_config import TrainConfig
from core.training.fit import train

PER_REPLICA_BATCH = 4
REPLICAS = 2
# Deterministic settings (no dropout, no augmentation) so that replicas and a
# single device compute the same thing.
TINY = dict(input_size=64, max_images_per_split=8, head_epochs=1, finetune_epochs=1, dropout=0.0,
            rotation=0.0, zoom=0.0, contrast=0.0, flip=False)


def tiny_config(data_dir, weights, **changes) -> TrainConfig:
    return TrainConfig(data_dir=str(data_dir), weights=weights, batch_size=PER_REPLICA_BATCH, **TINY, **changes)


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory, data_dir, weights):
    """The reference: one device, batch and learning rates already at the
    global values that 2 replicas use."""
    base = tiny_config(data_dir, weights)
    config = distribute.scale_for_replicas(base, REPLICAS)
    runs_root = tmp_path_factory.mktemp("one-device") / "runs"
    return train(config, name="one-device", report=lambda line: None, runs_root=runs_root)


def command_line(config: TrainConfig, name: str) -> list[str]:
    """`python -m core train` with every setting of `config`."""
    args = [sys.executable, "-m", "core", "train", "--name", name]
    for key, value in vars(config).items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        elif value is not None:
            args += [flag, str(value)]
    return args


def environment(artifacts, **extra) -> dict:
    return {**os.environ, "COVIDCT_ARTIFACTS": str(artifacts), "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def the_only_run(artifacts):
    found = catalogue.list_runs(artifacts / "runs")
    assert len(found) == 1, [run["id"] for run in found]
    return found[0]


def assert_same_training(run_dir, reference_dir):
    """Same per-epoch losses and AUCs, same predictions, within float noise."""
    history, expected = storage.read_history(run_dir), storage.read_history(reference_dir)
    assert len(history) == len(expected) == 2  # head + fine-tuning
    for column in ("loss", "auc", "val_loss", "val_auc"):
        np.testing.assert_allclose(history[column], expected[column], rtol=1e-3, atol=1e-4, err_msg=column)
    probs, expected_probs = storage.read_predictions(run_dir), storage.read_predictions(reference_dir)
    pd.testing.assert_series_equal(probs.path, expected_probs.path)
    np.testing.assert_allclose(probs.prob, expected_probs.prob, atol=1e-3)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_mirrored_on_two_cpu_devices_matches_one_device(tmp_path, data_dir, weights, one_device_run):
    config = tiny_config(data_dir, weights, strategy="mirrored")
    env = environment(tmp_path, **{machine.CPU_DEVICES_VARIABLE: str(REPLICAS)})
    done = subprocess.run(command_line(config, "mirrored"), env=env, cwd=paths.PROJECT_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"{REPLICAS} replicas (local): global batch {PER_REPLICA_BATCH * REPLICAS}" in done.stdout

    run = the_only_run(tmp_path)
    assert run["status"]["state"] == "completed" and run["status"]["replicas"] == REPLICAS
    assert run["config"]["batch_size"] == PER_REPLICA_BATCH  # the saved config stays per replica
    assert_same_training(run["path"], one_device_run)


def train_on_two_workers(config: TrainConfig, artifacts, **env) -> list[str]:
    """`python -m core train` as two worker processes on localhost; their outputs."""
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(REPLICAS)]}
    workers = [
        subprocess.Popen(command_line(config, "two-workers"), cwd=paths.PROJECT_ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env=environment(artifacts, **env, TF_CONFIG=json.dumps(
                             {"cluster": cluster, "task": {"type": "worker", "index": index}})))
        for index in range(REPLICAS)
    ]
    try:
        outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]
    return outputs


def test_two_workers_on_localhost_match_one_device(tmp_path, data_dir, weights, one_device_run):
    outputs = train_on_two_workers(tiny_config(data_dir, weights, strategy="multiworker"), tmp_path)
    assert "2 replicas (worker-0)" in outputs[0] and "worker-1: training with the chief" in outputs[1]

    run = the_only_run(tmp_path)  # worker 1 wrote nothing in the runs folder
    assert run["status"]["state"] == "completed" and run["status"]["replicas"] == REPLICAS
    assert_same_training(run["path"], one_device_run)


def test_multiworker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        distribute.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {}}')
    with pytest.raises(ValueError, match="'cluster' and 'task'"):
        distribute.make_strategy("multiworker")


def test_cli_refuses_multiworker_without_cluster(tmp_path, data_dir):
    env = environment(tmp_path)
    env.pop("TF_CONFIG", None)
    done = subprocess.run([sys.executable, "-m", "core", "train", "--data-dir", str(data_dir),
                           "--strategy", "multiworker"], env=env, cwd=paths.PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    last_line = done.stderr.strip().splitlines()[-1]  # after TensorFlow's start-up lines
    assert last_line.startswith("error: ") and "strategy 'multiworker' needs TF_CONFIG" in last_line
    assert not (tmp_path / "runs").exists() or not catalogue.list_runs(tmp_path / "runs")


def test_config_refuses_unknown_strategy_and_one_cpu_device(data_dir, monkeypatch):
    monkeypatch.setenv(machine.CPU_DEVICES_VARIABLE, "1")
    problems = TrainConfig(data_dir=str(data_dir), strategy="horovod").problems()
    assert any("strategy 'horovod' is not one of default, mirrored, multiworker" in p for p in problems)
    assert any("COVIDCT_CPU_DEVICES=1 must be 0 (no split) or at least 2" in p for p in problems)
    monkeypatch.setenv(machine.CPU_DEVICES_VARIABLE, "two")
    assert any("COVIDCT_CPU_DEVICES='two' is not a whole number" in p
               for p in TrainConfig(data_dir=str(data_dir)).problems())
    monkeypatch.delenv(machine.CPU_DEVICES_VARIABLE)
    monkeypatch.delenv("TF_CONFIG", raising=False)  # so the Train page refuses it before launching
    assert any("needs TF_CONFIG" in p for p in TrainConfig(data_dir=str(data_dir), strategy="multiworker").problems())


def test_batch_and_learning_rates_scale_with_replicas(data_dir):
    config = TrainConfig(data_dir=str(data_dir), batch_size=16, head_lr=1e-3, finetune_lr=5e-5)
    assert distribute.scale_for_replicas(config, 1) is config
    scaled = distribute.scale_for_replicas(config, 4)
    assert (scaled.batch_size, scaled.head_lr, scaled.finetune_lr) == (64, 4e-3, 2e-4)
    assert replace(scaled, batch_size=16, head_lr=1e-3, finetune_lr=5e-5) == config


def test_two_workers_streaming_read_their_own_files_and_match_one_device(tmp_path, data_dir, weights, monkeypatch):
    """Over the frozen-stage cache's budget the images stream, and each worker
    reads only its share of the files (core.training.pipeline's shard): the training
    still equals one device's on the same global batches."""
    monkeypatch.setenv("COVIDCT_FROZEN_CACHE_GB", "0")
    reference = train(distribute.scale_for_replicas(tiny_config(data_dir, weights), REPLICAS), name="one-device",
                      report=lambda line: None, runs_root=tmp_path / "one" / "runs")
    outputs = train_on_two_workers(tiny_config(data_dir, weights, strategy="multiworker"), tmp_path / "two",
                                   COVIDCT_FROZEN_CACHE_GB="0")
    for output in outputs:
        assert "over budget, training end to end on streamed images" in output
    assert_same_training(the_only_run(tmp_path / "two")["path"], reference)
