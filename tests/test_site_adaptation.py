"""Adapting the deployed model to a site (core.training.site_adaptation):
whole patients held out fold by fold, a before/after on patients the
adapted models never saw, and refusals below the minimum."""
import shutil
from dataclasses import asdict

import pandas as pd
import pytest

from core.base import files, paths
from core.evaluation import classification
from core.runs import catalogue
from core.runs.train_config import TrainConfig
from core.training import site_adaptation

SY575 = paths.SHARED / "data" / "external" / "SY575-COVID19-CT"


@pytest.fixture
def site_setup(trained_run, tmp_path, monkeypatch):
    if not SY575.is_dir():
        pytest.skip(f"{SY575} not found")
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setattr(classification, "N_BOOT", 20)
    deployed = tmp_path / "artifacts" / "runs" / trained_run.name
    shutil.copytree(trained_run, deployed)
    return deployed


def test_patients_are_held_out_whole_and_below_the_minimum_refused():
    index = pd.DataFrame({"patient_id": [f"p{i // 3}" for i in range(18)], "y": [(i // 3) % 2 for i in range(18)]})
    fold = site_adaptation.patient_folds(index, None, seed=0)
    assert index.assign(fold=fold).groupby("patient_id")["fold"].nunique().max() == 1  # a patient in one fold
    for number in set(fold):
        assert set(index.y[fold == number]) == {0, 1}  # each fold holds out both classes
    with pytest.raises(ValueError, match="needs at least 2 of each"):
        site_adaptation.patient_folds(index[index.patient_id.isin(["p0", "p1", "p2"])], None, seed=0)


def test_a_run_starts_only_from_a_model_of_its_own_network_and_input(trained_run):
    config = TrainConfig.from_dict(files.read_json(trained_run / "config.json"))
    assert not [p for p in config.problems() if "start_from_run" in p]
    started = TrainConfig(**{**asdict(config), "start_from_run": str(trained_run)})
    assert not [p for p in started.problems() if "start_from_run" in p]
    other = TrainConfig(**{**asdict(config), "start_from_run": str(trained_run), "input_size": 96})
    assert any("its input_size is 64, this config's 96" in p for p in other.problems())


def test_adapting_to_a_site_measures_before_and_after_on_unseen_patients(site_setup):
    result = site_adaptation.adapt(site_setup, [SY575], "hospital-b", folds=2, report=lambda line: None)
    assert result["folds"] == 2 and result["patients"] == 4 and result["slices"] == 48
    for when in ("before", "after"):
        assert result[when]["patients"]["n"] == 4 and result[when]["slices"]["n"] == 48
        assert result[when]["patients"]["roc_auc_ci"] is None  # 4 patients: too few for an interval
    work = paths.artifacts_dir() / "sites" / "hospital-b" / "adaptation"
    for number in (1, 2):  # a fold's model trained on none of the patients it scored
        trained = {p.parent.name for p in (work / f"fold{number}-training").rglob("*.jpg")}
        scored = {p.parent.name for p in (work / f"fold{number}-held-out").rglob("*.jpg")}
        assert trained and scored and not trained & scored
    adapted = {run["id"]: run for run in catalogue.list_runs()}[result["adapted_run"]]
    assert adapted["status"]["state"] == "completed" and adapted["config"]["start_from_run"] == str(site_setup)
    assert files.read_json(work.parent / "adaptation.json")["adapted_run"] == result["adapted_run"]
    table = site_adaptation.before_after_table(result)
    assert list(table.columns) == ["level", "figure", "before", "after"] and len(table) == 7
