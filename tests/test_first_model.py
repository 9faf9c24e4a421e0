"""Home's first model (core.jobs.first_model, ui.first_model): the presets'
labels say the estimate the Train page's box says, the first model's Fast
recipe fits in ten minutes by that estimate, the recipe's test override is checked, and
the run deploys itself only above the quality floor."""
import re
from dataclasses import asdict
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from core.base import files
from core.inference import deploy
from core.jobs import first_model
from core.runs import catalogue
from core.runs.train_config import TrainConfig
from core.training import presets


@pytest.mark.parametrize("name", list(presets.PRESETS))
@pytest.mark.parametrize("n_train", [40, 425, 5000])
def test_a_preset_label_states_the_minutes_of_its_estimate(name, n_train):
    defaults = TrainConfig()
    label = presets.preset_label(name, defaults, n_train)
    minutes = presets.estimate(TrainConfig(**presets.preset_config(name, defaults)), n_train)["minutes"]
    assert re.search(r"\(up to (\d+) min\)$", label).group(1) == str(max(1, round(minutes)))


def test_the_first_model_is_estimated_at_ten_minutes_at_most_and_quick_look_says_what_it_is_not(monkeypatch):
    monkeypatch.delenv(first_model.RECIPE_VARIABLE, raising=False)
    assert presets.estimate(first_model.recipe(), presets.REFERENCE_TRAIN_IMAGES)["minutes"] <= 10
    assert presets.QUICK_LOOK_NOTE.startswith("not for predictions")


def test_the_first_model_recipe_is_the_fast_preset_unless_the_variable_changes_it(monkeypatch):
    monkeypatch.delenv(first_model.RECIPE_VARIABLE, raising=False)
    assert first_model.recipe() == TrainConfig(**{**asdict(TrainConfig()), **presets.FAST_CHANGES})
    assert first_model.recipe().input_size < TrainConfig().input_size
    monkeypatch.setenv(first_model.RECIPE_VARIABLE, '{"input_size": 64, "train_from": "head"}')
    assert (first_model.recipe().input_size, first_model.recipe().train_from) == (64, "head")
    for bad, words in (("{input_size: 64}", "JSON object"), ("[1, 2]", "JSON object"),
                       ('{"input_sise": 64}', "unknown settings: input_sise"), ('{"input_size": 2}', "input_size")):
        monkeypatch.setenv(first_model.RECIPE_VARIABLE, bad)
        with pytest.raises(ValueError, match=words):
            first_model.recipe()


def test_progress_counts_both_phases_and_never_says_nothing_is_left_while_epochs_are():
    config = TrainConfig()
    started = datetime.fromisoformat("2026-01-01T00:00:00+00:00")
    run = {"config": vars(config),
           "status": {"state": "running", "phase": "finetune", "epoch": 3, "epochs": config.finetune_epochs,
                      "batch": 7, "steps": 14, "started_at": started.isoformat()}}
    epochs = config.head_epochs + config.finetune_epochs
    early = first_model.progress(run, 425, now=started + timedelta(minutes=1))
    assert early["fraction"] == pytest.approx((config.head_epochs + 2.5) / epochs)
    assert early["remaining"] == pytest.approx(early["estimate"] * 60 - 60)
    late = first_model.progress(run, 425, now=started + timedelta(hours=1))  # a slow machine
    assert late["remaining"] > 0 and late["elapsed"] == 3600


@pytest.fixture
def own_artifacts(trained_run, tmp_path, monkeypatch):
    """A copy of the tiny run in an artifacts folder of this test, named as Home names a first model."""
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path))
    copy = tmp_path / "runs" / trained_run.name.replace("smoke", first_model.FIRST_MODEL)
    shutil.copytree(trained_run, copy)
    # Trained by this test process, which lives on: as if by a process of its own that has ended.
    files.write_json(copy / "status.json", {**files.read_json(copy / "status.json"), "pid": None})
    return copy


def passing_the_floor(run_dir, roc_auc_low: float) -> None:
    """Make the copied tiny run look like one trained on every image, tested on 60 slices,
    with the lower end of its test ROC-AUC's CI at `roc_auc_low`."""
    files.write_json(run_dir / "config.json", {**files.read_json(run_dir / "config.json"), "max_images_per_split": 0})
    metrics = files.read_json(run_dir / "metrics.json")
    test = metrics["test"]["at_threshold"]
    test.update(n=60, ci={**test["ci"], "roc_auc": [roc_auc_low, 0.95]})
    files.write_json(run_dir / "metrics.json", metrics)


def test_the_first_model_is_not_deployed_below_the_floor_and_home_says_why(own_artifacts):
    reasons = first_model.deploy_when_fit(own_artifacts, report=lambda line: None)
    assert any("trained on a subset" in reason for reason in reasons)
    assert deploy.deployed_record() is None
    run = first_model.latest(catalogue.list_runs())
    assert run["id"] == own_artifacts.name and first_model.stage(run) == "not deployed"

    passing_the_floor(own_artifacts, roc_auc_low=0.5)  # chance: the floor wants its CI above 0.5
    assert any("could be chance" in r for r in first_model.deploy_when_fit(own_artifacts, report=lambda line: None))
    assert deploy.deployed_record() is None


def test_the_first_model_deploys_itself_above_the_floor(own_artifacts):
    passing_the_floor(own_artifacts, roc_auc_low=0.7)
    assert first_model.deploy_when_fit(own_artifacts, report=lambda line: None) == []
    assert deploy.deployed_record()["run"] == own_artifacts.name
    assert first_model.stage(catalogue.load_run(own_artifacts)) == "deployed"
    # Deployed on purpose meanwhile, another model stays: the first model does not replace it.
    second = own_artifacts.with_name(f"{own_artifacts.name}-again")
    shutil.copytree(own_artifacts, second)
    assert "stays" in first_model.deploy_when_fit(second, report=lambda line: None)[0]
    assert deploy.deployed_record()["run"] == own_artifacts.name


def test_home_follows_the_first_model_and_says_why_it_was_not_deployed(own_artifacts):
    import os

    from streamlit.testing.v1 import AppTest

    def home() -> AppTest:
        at = AppTest.from_file(str(Path(__file__).parent.parent / "streamlit_app.py"), default_timeout=120).run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    at = home()  # finished below the floor: why, and the button to try again
    warnings = "\n".join(w.value for w in at.warning)
    assert "not fit to answer" in warnings and "trained on a subset" in warnings
    assert at.button(key="first_model_start").label == "Train and use a first model"

    status = files.read_json(own_artifacts / "status.json")
    files.write_json(own_artifacts / "status.json", {**status, "pid": os.getpid(), "pid_start": None})
    at = home()  # trained, and its process (alive) deploys it
    assert "preparing it for Predict" in "\n".join(i.value for i in at.info)

    files.write_json(own_artifacts / "status.json", {
        **status, "state": "running", "pid": os.getpid(), "pid_start": None, "phase": "finetune", "epoch": 1,
        "epochs": 1, "batch": 1, "steps": 2, "started_at": datetime.now().astimezone().isoformat()})
    at = home()  # training: its phase, the time left, Cancel, and no second start
    assert "fine-tuning, epoch 1/1" in at.get("progress")[0].proto.text
    assert any(" left** (0:0" in m.value for m in at.markdown)
    assert [b.key for b in at.button if b.key.startswith("first_model")] == ["first_model_cancel"]
