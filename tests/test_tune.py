"""Hyperparameter search: core.training.tune, `python -m core tune` and the Train page's section.

Trials are real but tiny (ResNet-50 at 32 px, 4 images per split, one epoch
per phase: 15-25 s each on two cores). One study, "small", is made for the
module the way a user resumes one (1 trial, then resumed to 3) and shared by
the tests that only read it or add no training.
"""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from streamlit.testing.v1 import AppTest

from core.runs import lock
from core.jobs import background
from core.base import paths
from core.runs import catalogue
from core.runs import storage
from core.base import files
from core.training import search_space
from core.training import studies
from core.training import tune
from core.cli.main import build_parser, main
from core.cli.training import config_from_args
from core.runs.train_config import TrainConfig
from core.runs.promoted import load_default_config, reset_default
from ui import navigation

ROOT = Path(__file__).resolve().parent.parent
TINY = {"input_size": 32, "max_images_per_split": 4, "head_epochs": 1, "finetune_epochs": 1}
TINY_OPTIONS = [part for key, value in TINY.items() for part in ("--" + key.replace("_", "-"), str(value))]


def quiet(line):
    pass


def finished(study):
    return [t for t in study.get_trials() if t.state in studies.FINISHED]


@pytest.fixture(scope="module")
def small_study(tmp_path_factory, data_dir, weights):
    """Artifacts with the study "small": one trial, then resumed to three."""
    root = tmp_path_factory.mktemp("tune-artifacts")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COVIDCT_ARTIFACTS", str(root))
        first = tune.run_search("small", 1, base=TINY, report=quiet)
        first_run = first.trials[0].user_attrs["run"]
        tune.run_search("small", 3, report=quiet)  # no settings: the study's own
    return root, first_run


@pytest.fixture
def small(small_study, monkeypatch):
    """The shared artifacts as $COVIDCT_ARTIFACTS; promoted defaults are undone after each test."""
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(small_study[0]))
    yield small_study
    reset_default()


def start_worker(study: str, trials: int, log: Path, *options) -> subprocess.Popen:
    """`python -m core tune` in its own process, as a user starts a worker."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "core", "tune", "--study", study, "--trials", str(trials),
                                 *options], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def wait_for(condition, alive, timeout=180):
    """The first truthy value of condition(), polled while alive() holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert alive(), "the worker ended before it got there"
        time.sleep(0.5)
    raise AssertionError("timed out")


def training_trial(name: str):
    """A running trial whose run has started training (train()'s handlers are in place)."""
    try:
        study = studies.load_study(name)
    except ValueError:  # not created yet
        return None
    for trial in study.get_trials(states=(TrialState.RUNNING,)):
        run = trial.user_attrs.get("run")
        if run and storage.read_status(storage.run_path(run)).get("phase"):
            return trial
    return None


# ---------------------------------------------------------------------------
# Search, resume, workers
# ---------------------------------------------------------------------------

def test_a_three_trial_search_makes_a_run_per_trial(small):
    study = studies.load_study("small")
    trials = finished(study)
    assert [t.number for t in trials] == [0, 1, 2]
    space = study.user_attrs["space"]
    assert "input_size" not in space  # fixed by the base settings, so not searched
    assert space["backbone"] == ["resnet50"]  # the only backbone the ResNet-50 weights file fits
    for trial in trials:
        assert set(trial.params) == set(space)
        run = catalogue.load_run(storage.run_path(trial.user_attrs["run"]))
        assert run["status"]["state"] == "completed"
        assert (run["status"]["study"], run["status"]["trial"]) == ("small", trial.number)
        for key, value in {**TINY, **search_space.settings(trial.params)}.items():
            assert run["config"][key] == pytest.approx(value), key
        assert trial.value == tune.validation_auc(run["path"]) == run["metrics"]["val"]["at_0.5"]["roc_auc"]

    # Evaluate's comparison table lists the trials with their study and validation AUC.
    table = catalogue.compare_runs(catalogue.list_runs())
    listed = table[table["study"] == "small"]
    assert set(listed["run"]) == {t.user_attrs["run"] for t in trials}
    assert listed["val_roc_auc"].notna().all()


def test_resuming_runs_only_the_missing_trials(small):
    root, first_run = small
    study = studies.load_study("small")
    assert study.trials[0].user_attrs["run"] == first_run
    trial_runs = [p.name for p in (root / "runs").iterdir() if "-small-t" in p.name]
    assert len(trial_runs) == 3  # trial 0 was not trained again when the search resumed

    lines = []
    tune.run_search("small", 3, report=lines.append)
    assert "nothing to do" in lines[-1]
    assert len(finished(studies.load_study("small"))) == 3


def test_a_pruned_trial_counts_as_finished_and_its_run_reads_pruned(tmp_path, monkeypatch, data_dir, weights):
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path))
    every_trial = optuna.pruners.ThresholdPruner(lower=1.1)  # no AUC reaches 1.1
    study = tune.run_search("pruning", 1, base=TINY, report=quiet, pruner=every_trial)
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED
    assert trial.intermediate_values.keys() == {1}  # stopped after the first epoch
    assert trial.user_attrs["note"].startswith("pruned at epoch 1")
    status = storage.read_status(storage.run_path(trial.user_attrs["run"]))
    assert status["state"] == "pruned" and "pruned at epoch 1" in status["reason"]
    assert tune.run_search("pruning", 1, report=quiet).trials == study.trials  # it counts: nothing to do


def test_a_failed_trial_is_recorded_and_the_search_goes_on(tmp_path, monkeypatch, data_dir):
    """Training is faked: the first trial runs out of memory, the next ones succeed;
    then, training failing every time, the search stops after three failures."""
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path))
    calls = []

    def fake_train(config, run_dir, **kwargs):
        calls.append(run_dir)
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        files.write_json(run_dir / "metrics.json", {"val": {"at_0.5": {"roc_auc": 0.5 + len(calls) / 10}}})
        storage.set_status(run_dir, "completed")

    monkeypatch.setattr(tune, "train", fake_train)
    study = tune.run_search("flaky", 2, base=TINY, report=quiet)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert study.trials[0].user_attrs["note"] == "RuntimeError: out of memory"
    assert studies.trials_table(study)["note"].iloc[0] == "RuntimeError: out of memory"

    def broken_train(config, run_dir, **kwargs):
        raise RuntimeError("no GPU memory left")

    monkeypatch.setattr(tune, "train", broken_train)
    with pytest.raises(RuntimeError, match="3 trials failed in a row, the last with RuntimeError: no GPU memory"):
        tune.run_search("flaky", 10, report=quiet)
    assert len(studies.load_study("flaky").trials) == 6


def test_a_killed_worker_leaves_a_failed_trial_that_the_next_session_clears(small, tmp_path):
    worker = start_worker("small", 4, tmp_path / "worker.log")  # one trial more than the study has
    try:
        trial = wait_for(lambda: training_trial("small"), lambda: worker.poll() is None)
    finally:
        worker.kill()  # SIGKILL: no handler runs, the trial stays RUNNING in the study
        worker.wait()
    assert studies.load_study("small").trials[trial.number].state == TrialState.RUNNING

    lines = []
    tune.run_search("small", 3, report=lines.append)  # the worker's process is gone: its trial failed
    assert "nothing to do" in lines[-1]
    study = studies.load_study("small")
    assert study.trials[trial.number].state == TrialState.FAIL
    assert studies.trials_table(study)["note"].iloc[trial.number] == "its worker died"
    assert storage.read_status(storage.run_path(trial.user_attrs["run"]))["state"] == "interrupted"
    assert len(finished(study)) == 3


def test_stop_cancels_the_trial_in_progress_and_releases_the_lock(small):
    pid = background.launch_search("small", 5)

    def alive():
        return storage.pid_alive(pid)

    try:
        assert lock.active_training()["pid"] == pid  # no other training starts meanwhile
        with pytest.raises(lock.TrainingBusy, match="already being searched"):
            background.launch_search("small", 5)
        trial = wait_for(lambda: training_trial("small"), alive)
        assert background.stop_search("small")
        wait_for(lambda: not alive(), lambda: True, timeout=60)
    finally:
        if alive():
            os.kill(pid, signal.SIGKILL)
    stopped = studies.load_study("small").trials[trial.number]
    assert stopped.state == TrialState.FAIL
    assert stopped.user_attrs["note"] == "RunCancelled: stopped by SIGTERM"
    assert storage.read_status(storage.run_path(stopped.user_attrs["run"]))["state"] == "cancelled"
    assert lock.active_training() is None and background.search_worker("small") is None
    assert "interrupted" in studies.log_path("small").read_text()


def test_two_worker_processes_share_one_study(tmp_path, monkeypatch, data_dir, weights):
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path))
    first = start_worker("shared", 3, tmp_path / "first.log", *TINY_OPTIONS)
    try:
        # The second joins once the first has created the study and is training.
        wait_for(lambda: training_trial("shared"), lambda: first.poll() is None)
        second = start_worker("shared", 3, tmp_path / "second.log")  # no settings: the study's own
        for worker, log in ((first, "first.log"), (second, "second.log")):
            assert worker.wait(timeout=400) == 0, (tmp_path / log).read_text()[-3000:]
    finally:
        for worker in (first, locals().get("second")):
            if worker and worker.poll() is None:
                worker.kill()
    study = studies.load_study("shared")
    assert sorted(t.number for t in study.trials) == [0, 1, 2]  # the target, no trial twice
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert {t.user_attrs["worker"]["pid"] for t in study.trials} == {first.pid, second.pid}
    assert len({t.user_attrs["run"] for t in study.trials}) == 3
    assert "best: trial" in (tmp_path / "second.log").read_text()


# ---------------------------------------------------------------------------
# Promote, and the command line's answers to bad input
# ---------------------------------------------------------------------------

def test_promote_makes_the_best_trial_the_default_until_reset(small, capsys):
    assert main(["tune", "--study", "small", "--show", "--promote"]) == 0
    out = capsys.readouterr().out
    study = studies.load_study("small")
    best = study.best_trial
    assert f"best: trial {best.number} complete" in out and "promoted" in out
    expected = TrainConfig.from_dict({**study.user_attrs["base"], **search_space.settings(best.params)})
    assert load_default_config() == expected
    # `python -m core train` starts from it; options still win.
    assert config_from_args(build_parser().parse_args(["train"])) == expected
    assert config_from_args(build_parser().parse_args(["train", "--seed", "3"])) == replace(expected, seed=3)
    saved = json.loads(paths.default_config_path().read_text())
    # The dataset's place stays with the machine; a cross-validation fold stays with its run.
    assert not {"data_dir", "cv_folds", "cv_fold"} & set(saved["config"])
    assert saved["promoted_from"]["trial"] == best.number

    assert main(["tune", "--reset-default"]) == 0
    assert load_default_config() == TrainConfig()


def test_a_broken_default_config_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path))
    paths.default_config_path().write_text(json.dumps({"config": {"learning_rate": 0.1}}))
    assert main(["train"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "unknown config setting(s): learning_rate" in line and "--reset-default" in line


@pytest.mark.parametrize("options, message", [
    (["--study", "a/b", "--trials", "1"], "invalid study name 'a/b'"),
    (["--trials", "1"], "give --study NAME"),
    (["--study", "x"], "give --trials N"),
    (["--study", "x", "--trials", "0"], "trials 0 must be at least 1"),
    (["--study", "x", "--trials", "1", "--backbones", "vgg16"], "backbone 'vgg16' is not one of"),
    (["--study", "x", "--trials", "1", "--backbones", "resnet101"], "backbone resnet101 cannot load the weights"),
    (["--study", "x", "--trials", "1", "--space", '{"learning_rate": [0.1]}'], "unknown parameter 'learning_rate'"),
    (["--study", "x", "--trials", "1", "--space", '{"batch_size": ["16"]}'], "batch_size '16' must be an integer"),
    (["--study", "x", "--trials", "1", "--space", '{"dropout": {"low": 0.5}}'], "dropout: a range is"),
    (["--study", "x", "--trials", "1", "--space", "{not json"], "--space is not valid JSON"),
    (["--study", "x", "--show"], "no study named 'x'"),
    (["--study", "x", "--trials", "1", "--strategy", "multiworker"], "cannot train with strategy 'multiworker'"),
])
def test_bad_tune_input_exits_2_with_one_line(options, message, tmp_path, monkeypatch, capsys, data_dir, weights):
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path))
    assert main(["tune", *options, *TINY_OPTIONS]) == 2
    err = capsys.readouterr().err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and message in line, line
    assert list_files(tmp_path / "studies") == []  # refused before any study file is made


def list_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_resumed_study_refuses_other_settings(small, capsys):
    assert main(["tune", "--study", "small", "--trials", "3", "--input-size", "64"]) == 2
    assert "study 'small' was created with input_size 32 (not 64)" in capsys.readouterr().err
    assert main(["tune", "--study", "small", "--trials", "3", "--space", '{"batch_size": [8]}']) == 2
    assert "another search space" in capsys.readouterr().err
    assert main(["tune", "--study", "small", "--trials", "3", *TINY_OPTIONS]) == 0  # the same ones: fine


# ---------------------------------------------------------------------------
# The Search page (it starts from the Train page's form)
# ---------------------------------------------------------------------------

def open_page(page: str, at: AppTest | None = None) -> AppTest:
    # AppTest finds a page by its file among those st.navigation registered: a new session runs Home first.
    at = at or AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()
    at.switch_page(page)
    return at.run()


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def test_search_section_without_studies_starts_a_search_from_the_form(tmp_path, monkeypatch, data_dir, weights):
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path))
    started = []
    monkeypatch.setattr(background, "launch_search", lambda *args, **kwargs: started.append((args, kwargs)) or 4242)
    at = open_page(navigation.TRAIN)
    at.number_input(key="cfg_max_images_per_split").set_value(4).run()  # the form the search starts from
    open_page(navigation.SEARCH, at)
    assert not at.exception and not at.error, texts(at.error)
    assert "Hyperparameter search" in texts(at.title)
    assert "No study by this name yet" in texts(at.info)
    assert at.multiselect(key="space_backbone").value == ["resnet50"]

    at.multiselect(key="space_batch_size").set_value([16])
    at.checkbox(key="space_dropout").uncheck()
    at.text_input(key="study_name").set_value("from-the-app")
    at.number_input(key="study_trials").set_value(5).run()
    button(at, "Start search").click().run()
    assert not at.exception, [e.value for e in at.exception]

    ((args, kwargs),) = started
    assert args == ("from-the-app", 5)
    assert kwargs["space"]["batch_size"] == [16] and "dropout" not in kwargs["space"]
    assert kwargs["base"]["max_images_per_split"] == 4 and kwargs["base"]["dropout"] == 0.3  # the form's
    assert "batch_size" not in kwargs["base"] and "rotation" not in kwargs["base"]  # searched
    assert "Search from-the-app started" in texts(at.success)


def test_search_section_shows_the_study_and_promotes_its_best(small):
    at = open_page(navigation.SEARCH)
    at.text_input(key="study_name").set_value("small").run()
    assert not at.exception and not at.error, texts(at.error)
    study = studies.load_study("small")
    best = study.best_trial
    table = at.dataframe[-1].value
    assert {t.number for t in finished(study)} <= set(table["Trial"])  # ui.column_names: human names
    assert f"Best: trial {best.number}" in texts(at.success)
    assert len(at.get("plotly_chart")) >= 1

    button(at, "Promote best to default").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert load_default_config().input_size == 32
    open_page(navigation.TRAIN, at)
    assert at.number_input(key="cfg_input_size").value == 32  # the form shows the new defaults
    assert "Defaults promoted from study **small**" in texts(at.info)

    button(at, "Back to the project's defaults").click().run()
    assert not paths.default_config_path().exists()
    assert at.number_input(key="cfg_input_size").value == TrainConfig().input_size
