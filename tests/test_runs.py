"""Run folders: atomic writes, interrupted-run detection, the one-training lock, safe run ids."""
import json
import os
import subprocess
import sys

import pytest

from core.runs import lock
from core.jobs import background
from core.base import files
from core.runs import catalogue
from core.runs import storage


def test_atomic_json_write_keeps_the_old_version_when_the_writer_dies(tmp_path):
    target = tmp_path / "metrics.json"
    files.write_json(target, {"version": 1})

    class WriterDied(Exception):
        pass

    def dies_midway(handle):
        handle.write('{"version": 2, "half')
        raise WriterDied

    with pytest.raises(WriterDied):
        files.atomic_write(target, dies_midway)
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left


def test_killed_writer_process_leaves_the_previous_file_intact(tmp_path):
    target = tmp_path / "status.json"
    files.write_json(target, {"state": "running", "epoch": 3})
    # A child process starts a huge write and is SIGKILLed before it finishes.
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]); from core.base import files\n"
            "def slow(handle):\n"
            "    handle.write('{\"state\": ')\n"
            "    handle.flush(); print('writing', flush=True); time.sleep(60)\n"
            "files.atomic_write(sys.argv[1], slow)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(target), os.getcwd()], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    child.kill()
    child.wait()
    assert json.loads(target.read_text()) == {"state": "running", "epoch": 3}


def test_running_run_whose_process_died_reads_as_interrupted(tmp_path):
    run_dir = storage.new_run({"seed": 0}, name="x", runs_root=tmp_path)
    assert storage.read_status(run_dir)["state"] == "running"  # this process is alive
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    storage.set_status(run_dir, "running", pid=dead.pid)
    assert storage.read_status(run_dir)["state"] == "interrupted"
    assert catalogue.list_runs(tmp_path)[0]["status"]["state"] == "interrupted"


@pytest.mark.parametrize("bad", ["../evil", "/etc/passwd", "..", "a/b", "x\x00y", "", ".hidden"])
def test_run_ids_cannot_escape_the_runs_folder(tmp_path, bad):
    with pytest.raises(ValueError, match="invalid run id"):
        storage.run_path(bad, tmp_path)


def test_second_training_is_refused_while_the_first_holds_the_lock(tmp_path):
    lock.acquire_training_lock("first", tmp_path)
    try:
        holder = lock.active_training(tmp_path)
        assert holder == {**storage.owner(os.getpid()), "run": "first"}
        with pytest.raises(lock.TrainingBusy, match="first"):
            lock.acquire_training_lock("second", tmp_path)
    finally:
        lock.release_training_lock(tmp_path)
    assert lock.active_training(tmp_path) is None
    lock.acquire_training_lock("second", tmp_path)  # free again
    lock.release_training_lock(tmp_path)


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".training.lock").write_text(json.dumps({"pid": dead.pid, "run": "killed"}))
    assert lock.active_training(tmp_path) is None
    lock.acquire_training_lock("next", tmp_path)
    assert lock.active_training(tmp_path)["run"] == "next"
    lock.release_training_lock(tmp_path)


def test_compare_runs_has_settings_and_test_metrics(tmp_path):
    run_dir = storage.new_run({"backbone": "resnet50", "input_size": 224, "seed": 1}, name="a", runs_root=tmp_path)
    files.write_json(run_dir / "metrics.json", {"test": {"at_threshold": {"roc_auc": 0.91, "f1": 0.8}}})
    table = catalogue.compare_runs(catalogue.list_runs(tmp_path))
    assert table.loc[0, "backbone"] == "resnet50"
    assert table.loc[0, "test_roc_auc"] == 0.91
    assert table.loc[0, "test_f1"] == 0.8


def test_launch_refuses_a_second_start_before_the_first_child_is_up(tmp_path, data_dir, monkeypatch):
    """The launcher takes the lock itself, so the seconds the child spends
    importing TensorFlow leave no window for a second start."""
    import core.runs.train_config

    started = []

    class FakeChild:
        pid = os.getpid()  # alive, like a child still starting up

    monkeypatch.setattr(background.subprocess, "Popen", lambda *a, **k: started.append(a) or FakeChild())
    config = core.runs.train_config.TrainConfig(data_dir=str(data_dir))
    first = background.launch_training(config, runs_root=tmp_path)
    assert lock.active_training(tmp_path)["run"] == first.name
    with pytest.raises(lock.TrainingBusy, match=first.name):
        background.launch_training(config, runs_root=tmp_path)
    assert len(started) == 1


def _finished_run(runs_root, name: str, config: dict, state: str = "completed") -> str:
    run_dir = storage.new_run(config, name=name, runs_root=runs_root)
    storage.set_status(run_dir, state)
    return run_dir.name


def test_cross_validation_groups_hold_one_completed_run_per_fold_of_each_recipe(tmp_path):
    cv = {"cv_folds": 2, "seed": 0, "train_from": "conv3"}
    a_fold1 = _finished_run(tmp_path, "a-fold1", {**cv, "cv_fold": 0})
    _finished_run(tmp_path, "a-fold2-try1", {**cv, "cv_fold": 1})
    a_fold2 = _finished_run(tmp_path, "a-fold2-try2", {**cv, "cv_fold": 1})  # trained again: the newest counts
    b_fold1 = _finished_run(tmp_path, "b-fold1", {**cv, "cv_fold": 0, "train_from": "conv2"})  # another recipe
    _finished_run(tmp_path, "b-fold2", {**cv, "cv_fold": 1, "train_from": "conv2"}, state="failed")
    _finished_run(tmp_path, "c-fold1", {**cv, "cv_fold": 0, "seed": 1})  # another seed: other folds
    _finished_run(tmp_path, "plain", {"cv_folds": 0, "cv_fold": 0, "seed": 0, "train_from": "conv3"})

    groups = catalogue.cross_validation_groups(catalogue.list_runs(tmp_path))
    ids = [[run["id"] for run in group] for group in groups]
    assert len(ids) == 3 and ids[1:] == [[b_fold1], [a_fold1, a_fold2]]  # newest recipe first
    assert ids[0][0].endswith("c-fold1")
