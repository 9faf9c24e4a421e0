"""Several dataset folders (sources) in one index, and leave-one-source-out:
each image keeps its source, splits stratify by source and class and keep
patients whole, relpaths and patients stay unique, duplicates across sources
are audited, and a run can hold one source out and be evaluated on it."""
import json
import os
import shutil
from pathlib import Path

import pytest

from core.training import cross_validation
from core.data import datasets
from core.evaluation import classification
from core.base import paths
from core.cli.main import main
from core.runs.train_config import TrainConfig
from core.data.audit import audit_duplicates

SY575 = paths.SHARED / "data" / "external" / "SY575-COVID19-CT"


def small_source(data_dir: Path, folder: Path, per_class: int, skip: int = 0) -> Path:
    """A source of `per_class` COVID-CT images per class (no split lists, no
    metadata: each image its own patient)."""
    for label in ("COVID", "NonCOVID"):
        (folder / label).mkdir(parents=True)
        for path in sorted((data_dir / label).glob("*.png"))[skip:skip + per_class]:
            shutil.copy(path, folder / label / path.name)
    return folder


@pytest.fixture
def two_sources(data_dir, tmp_path):
    if not (SY575 / "COVID").is_dir():
        pytest.skip(f"external set not found at {SY575}")
    hospital_a = small_source(data_dir, tmp_path / "hospital-a", per_class=12)
    hospital_b = tmp_path / "SY575"
    shutil.copytree(SY575, hospital_b, ignore=shutil.ignore_patterns("*.md", "*.csv"))
    return hospital_a, hospital_b


def test_sources_keep_their_name_unique_ids_and_whole_patients(two_sources):
    hospital_a, hospital_b = two_sources
    index = datasets.index_dataset(os.pathsep.join([str(hospital_a), str(hospital_b)]))

    assert index.groupby("source").size().to_dict() == {"hospital-a": 24, "SY575": 48}
    assert index["relpath"].is_unique
    assert index["relpath"].str.split("/").str[0].tolist() == index["source"].tolist()
    # Patient folders are patients, named with their source; each sits in one split.
    sy575 = index[index["source"] == "SY575"]
    assert sorted(sy575["patient_id"].unique()) == ["SY575:COVID/person001", "SY575:COVID/person002",
                                                    "SY575:NonCOVID/person003", "SY575:NonCOVID/person004"]
    assert (index.groupby("patient_id")["split"].nunique() == 1).all()
    # Stratified by source and class: hospital A's classes are both in train, val and test.
    a_counts = index[index["source"] == "hospital-a"].groupby(["split", "label"]).size()
    assert len(a_counts) == 6
    for relpath in index["relpath"].sample(5, random_state=0):
        assert datasets.resolve_image(os.pathsep.join([str(hospital_a), str(hospital_b)]), relpath).is_file()
    counts = datasets.source_counts(index)
    assert counts.xs("SY575", level="source")["total"].sum() == 48


def test_a_source_too_small_to_split_trains_whole_beside_one_with_split_lists(two_sources, data_dir):
    # COVID-CT's lists give validation and test; SY575's 4 patients cannot give both splits with both
    # classes, so they all go to train (as leave-one-source-out trains COVID-CT plus a small set).
    _, hospital_b = two_sources
    index = datasets.index_dataset([data_dir, hospital_b], check_files=False)
    assert set(index.loc[index["source"] == "SY575", "split"]) == {"train"}
    assert "SY575: all 4 patients in train, too few to split" in index.attrs["split_source"]
    assert index.loc[index["source"] == data_dir.name, "split"].value_counts().to_dict() == {
        "train": 425, "test": 203, "val": 118}
    # Alone, they are refused: no other source brings validation and test splits.
    with pytest.raises(ValueError, match="SY575: 4 patients cannot be split into train, validation and test"):
        datasets.index_dataset(hospital_b)


def test_a_source_whose_splits_would_hold_one_class_trains_whole_beside_one_with_split_lists(data_dir, tmp_path):
    # Enough patients to split (12), but one has COVID: whichever of validation and test it misses
    # would hold one class, which can choose no threshold. Beside COVID-CT's lists it trains whole;
    # alone it is refused with that reason.
    one_covid = small_source(data_dir, tmp_path / "one-covid", per_class=11)
    (one_covid / "COVID" / "patient1").mkdir()
    for path in sorted((one_covid / "COVID").glob("*.png")):
        path.rename(one_covid / "COVID" / "patient1" / path.name)
    index = datasets.index_dataset([data_dir, one_covid], check_files=False)
    assert set(index.loc[index["source"] == "one-covid", "split"]) == {"train"}
    assert "one-covid: all 12 patients in train, too few to split" in index.attrs["split_source"]
    assert "split would hold one class only" in index.attrs["split_source"]
    with pytest.raises(ValueError, match="one-covid: 12 patients cannot be split .* one class only"):
        datasets.index_dataset(one_covid, check_files=False)


def test_sources_must_share_their_classes_and_names(two_sources, tmp_path):
    hospital_a, _ = two_sources
    other = tmp_path / "other"
    shutil.copytree(hospital_a / "COVID", other / "COVID")
    shutil.copytree(hospital_a / "NonCOVID", other / "Pneumonia")
    with pytest.raises(ValueError, match="do not share the same two class folders"):
        datasets.index_dataset([hospital_a, other])
    twin = tmp_path / "copy" / "hospital-a"
    shutil.copytree(hospital_a, twin)
    with pytest.raises(ValueError, match="share the name 'hospital-a'"):
        datasets.index_dataset([hospital_a, twin])


def test_audit_finds_a_scan_shared_by_two_sources(two_sources):
    hospital_a, hospital_b = two_sources
    shared = next((hospital_a / "COVID").glob("*.png"))
    shutil.copy(shared, hospital_b / "COVID" / "person001" / "copied.png")
    index = datasets.index_dataset([hospital_a, hospital_b])
    pairs = audit_duplicates(index, max_distance=0)
    exact = pairs[(pairs["kind"] == "exact") & pairs["cross_source"]]
    assert {tuple(sorted(p)) for p in exact[["relpath_a", "relpath_b"]].to_numpy()} == {
        ("SY575/COVID/person001/copied.png", f"hospital-a/COVID/{shared.name}")}


def test_holdout_source_is_checked_against_the_sources(two_sources, weights):
    hospital_a, hospital_b = two_sources
    both = os.pathsep.join([str(hospital_a), str(hospital_b)])
    assert not TrainConfig(data_dir=both, holdout_source="SY575", weights=weights).problems()
    [problem] = TrainConfig(data_dir=both, holdout_source="hospital-c", weights=weights).problems()
    assert "'hospital-c' is not one of the sources in data_dir (hospital-a, SY575)" in problem
    [problem] = TrainConfig(data_dir=str(hospital_a), holdout_source="hospital-a", weights=weights).problems()
    assert "needs at least two sources" in problem
    config = TrainConfig(data_dir=both, holdout_source="SY575")
    assert config.training_sources() == [hospital_a] and config.held_out_source() == hospital_b


def test_leave_one_source_out_trains_one_run_per_source(two_sources, monkeypatch):
    trained = []

    def fake_train(config, name=None, report=print, runs_root=None):
        trained.append((config.holdout_source, name))
        return Path(name)

    monkeypatch.setattr(cross_validation, "train", fake_train)
    hospital_a, hospital_b = two_sources
    config = TrainConfig(data_dir=os.pathsep.join([str(hospital_a), str(hospital_b)]))
    folds = cross_validation.leave_one_source_out(config, name="x", report=lambda line: None)
    # Without hospital A, SY575's 4 patients alone cannot make train, validation and test splits:
    # that fold is refused with the reason (no run folder), the other trains.
    assert [(fold.source, fold.run_dir) for fold in folds] == [
        ("hospital-a", None), ("SY575", Path("x-without-SY575"))]
    assert "SY575: 4 patients cannot be split" in folds[0].refused
    assert trained == [("SY575", "x-without-SY575")]
    with pytest.raises(ValueError, match="at least two dataset folders"):
        cross_validation.leave_one_source_out(TrainConfig(data_dir=str(hospital_a)))


def test_a_tiny_run_trains_without_a_source_and_is_evaluated_on_it(two_sources, weights, tmp_path,
                                                                    monkeypatch, capsys):
    hospital_a, hospital_b = two_sources
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setattr(classification, "N_BOOT", 50)
    assert main(["train", "--data-dir", os.pathsep.join([str(hospital_a), str(hospital_b)]),
                 "--holdout-source", "SY575", "--weights", weights, "--input-size", "64", "--batch-size", "4",
                 "--head-epochs", "1", "--finetune-epochs", "1", "--name", "loso"]) == 0
    out = capsys.readouterr().out
    [run_dir] = (tmp_path / "artifacts" / "runs").iterdir()
    predictions = (run_dir / "predictions.csv").read_text()
    assert "SY575" not in predictions  # trained, validated and tested on hospital A alone
    config = json.loads((run_dir / "config.json").read_text())
    first = predictions.splitlines()[1].split(",")[0]
    assert datasets.resolve_image(config["data_dir"], first, config["holdout_source"]).is_file()
    held_out = json.loads((run_dir / "external" / "SY575" / "metrics.json").read_text())
    assert held_out["slice"]["n"] == 48 and held_out["patient"]["n"] == 4
    assert "SY575: 48 slices" in out
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
