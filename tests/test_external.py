"""External validation: class matching, patient folders, patient-level
aggregation and resampling, the stored result, and the command line."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from core.evaluation import patient_level
from core.evaluation import classification
from core.inference import calibration, external, scan_decision
from core.jobs import background
from core.base import paths
from core.cli.main import main

SY575 = paths.SHARED / "data" / "external" / "SY575-COVID19-CT"


@pytest.fixture(scope="session")
def sy575():
    if not (SY575 / "COVID").is_dir():
        pytest.skip(f"external set not found at {SY575}")
    return SY575


def test_class_map_is_parsed_and_refuses_malformed_entries():
    assert external.parse_class_map(" COVID19=COVID, non-COVID19 = NonCOVID ,") == {
        "COVID19": "COVID", "non-COVID19": "NonCOVID"}
    assert external.parse_class_map(None) == {}
    with pytest.raises(ValueError, match="'COVID19' is not FOLDER=CLASS"):
        external.parse_class_map("COVID19")


def test_classes_match_by_name_or_map_and_an_unmatched_folder_is_named():
    assert external.match_classes(["covid", "NonCOVID"], "NonCOVID", "COVID") == {"covid": 1, "NonCOVID": 0}
    mapped = external.match_classes(["COVID19", "Normal", "Pneumonia"], "NonCOVID", "COVID",
                                    {"COVID19": "COVID", "Normal": "NonCOVID", "Pneumonia": "NonCOVID"})
    assert mapped == {"COVID19": 1, "Normal": 0, "Pneumonia": 0}
    with pytest.raises(ValueError, match="'Pneumonia' match none of the run's classes") as error:
        external.match_classes(["COVID", "Pneumonia"], "NonCOVID", "COVID")
    assert "\n" not in str(error.value) and "--class-map" in str(error.value)
    with pytest.raises(ValueError, match="'Healthy' is not one of the run's classes"):
        external.match_classes(["COVID", "X"], "NonCOVID", "COVID", {"X": "Healthy"})


def test_patient_sub_folders_are_read_as_patients(sy575):
    index = external.index_external(sy575, "NonCOVID", "COVID")
    assert len(index) == 48
    assert index.groupby("patient_id")["y"].agg(["size", "first"]).to_dict("index") == {
        "COVID/person001": {"size": 15, "first": 1}, "COVID/person002": {"size": 14, "first": 1},
        "NonCOVID/person003": {"size": 10, "first": 0}, "NonCOVID/person004": {"size": 9, "first": 0}}


def test_patient_probability_is_the_mean_of_its_slices_and_mixed_labels_are_refused():
    slices = pd.DataFrame({"patient_id": ["a", "a", "b", "b", "b"], "y_true": [1, 1, 0, 0, 0],
                           "prob": [0.2, 0.6, 0.1, 0.2, 0.9]})
    patients = patient_level.per_patient(slices)
    assert patients[["patient_id", "y_true", "slices"]].to_dict("list") == {
        "patient_id": ["a", "b"], "y_true": [1, 0], "slices": [2, 3]}
    assert patients["prob"].tolist() == pytest.approx([0.4, 0.4])
    with pytest.raises(ValueError, match="patient 'a' has slices of both classes"):
        patient_level.per_patient(slices.assign(y_true=[1, 0, 0, 0, 0]))


def test_bootstrap_by_patient_resamples_whole_patients():
    rng = np.random.default_rng(1)
    y = np.array([0, 1] * 10)
    prob = np.clip(y * 0.3 + rng.uniform(0, 0.7, y.size), 0, 1)
    # Each patient has three identical slices: resampling whole patients must
    # give exactly the intervals of resampling the patients' single values.
    repeated = classification.bootstrap_ci(np.repeat(y, 3), np.repeat(prob, 3), 0.5, n_boot=200,
                                     groups=np.repeat(np.arange(y.size), 3))
    assert repeated == classification.bootstrap_ci(y, prob, 0.5, n_boot=200)
    # Resampled slice by slice, the same cases look three times as many: narrower, wrongly.
    by_slice = classification.bootstrap_ci(np.repeat(y, 3), np.repeat(prob, 3), 0.5, n_boot=200)
    width = {name: high - low for name, (low, high) in repeated.items()}
    assert by_slice["roc_auc"][1] - by_slice["roc_auc"][0] < width["roc_auc"]


def test_external_evaluation_is_stored_in_the_run(trained_run, sy575, tmp_path):
    run_dir = tmp_path / trained_run.name
    shutil.copytree(trained_run, run_dir)
    lines = []
    out = external.evaluate_on(run_dir, sy575, report=lines.append, n_boot=50)

    assert out == run_dir / "external" / "SY575-COVID19-CT"
    predictions = pd.read_csv(out / "predictions.csv")
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(predictions) == 48 and predictions["patient_id"].nunique() == 4
    threshold = json.loads((run_dir / "metrics.json").read_text())["threshold"]["value"]
    assert metrics["threshold"] == pytest.approx(threshold)  # the run's, never re-chosen on the external set
    at = metrics["slice"]["at_threshold"]
    expected = classification.binary_metrics(predictions["y_true"], predictions["prob"], threshold)
    assert {k: at[k] for k in expected} == pytest.approx(expected)
    # Each patient is decided as Predict decides one scan: calibrated slices, the run's scan rule.
    scan = scan_decision.settings_for_run(run_dir)
    assert metrics["patient"]["n"] == 4 and metrics["patient"]["aggregation"] == scan["aggregation"]
    assert metrics["patient"]["threshold"] == pytest.approx(scan["threshold"])
    calibrated = predictions.assign(prob=calibration.for_run(run_dir).apply(predictions["prob"]))
    patient = patient_level.per_patient(calibrated, scan["aggregation"])
    assert metrics["patient"]["at_threshold"]["tp"] + metrics["patient"]["at_threshold"]["fn"] == 2
    assert metrics["patient"]["at_threshold"]["accuracy"] == pytest.approx(
        ((patient["prob"] >= scan["threshold"]) == patient["y_true"]).mean())
    assert "scored 48/48 images" in "\n".join(lines)
    assert json.loads((out / "status.json").read_text())["state"] == "completed"

    [listed] = external.list_external(run_dir)
    assert listed["name"] == "SY575-COVID19-CT" and listed["state"] == "completed"
    # A damaged result file is listed with its reason, not raised.
    (out / "metrics.json").write_text("{not json")
    [listed] = external.list_external(run_dir)
    assert listed["state"] == "damaged" and "metrics.json" in listed["status"]["reason"]


def test_cli_evaluates_with_a_class_map_and_names_a_missing_class(trained_run, sy575, tmp_path, capsys):
    run_dir = tmp_path / trained_run.name
    shutil.copytree(trained_run, run_dir)
    renamed = tmp_path / "hospital-b"
    shutil.copytree(sy575 / "COVID", renamed / "COVID19")
    shutil.copytree(sy575 / "NonCOVID", renamed / "pneumonia")

    assert main(["evaluate", "--run", str(run_dir), "--data", str(renamed)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    assert "'COVID19', 'pneumonia' match none of the run's classes" in error

    assert main(["evaluate", "--run", str(run_dir), "--data", str(renamed), "--name", "b",
                 "--class-map", "COVID19=COVID,pneumonia=NonCOVID", "--n-boot", "50"]) == 0
    out = capsys.readouterr().out
    assert "b: 48 slices: ROC-AUC" in out and "4 patients (each as one scan: " in out
    assert (run_dir / "external" / "b" / "metrics.json").exists()


def test_a_background_evaluation_reports_progress_and_completes(trained_run, sy575, tmp_path):
    import time

    run_dir = tmp_path / trained_run.name
    shutil.copytree(trained_run, run_dir)
    with pytest.raises(ValueError, match="dataset folder not found"):
        background.launch_external(run_dir, tmp_path / "missing")
    name = background.launch_external(run_dir, sy575, name="sy575", class_map_text="")
    [found] = external.list_external(run_dir)
    assert found["name"] == "sy575" and found["state"] == "running"
    with pytest.raises(ValueError, match="already being evaluated"):
        background.launch_external(run_dir, sy575, name="sy575")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and found["state"] == "running":
        time.sleep(1)
        [found] = external.list_external(run_dir)
    assert found["state"] == "completed", (run_dir / "external" / name / "evaluate.log").read_text()
    assert found["status"]["done"] == found["status"]["total"] == 48
    assert found["metrics"]["patient"]["n"] == 4


def test_no_interval_is_drawn_over_too_few_patients(monkeypatch):
    monkeypatch.setattr(classification, "N_BOOT", 50)

    def predictions(patients_per_class):
        rows = [{"patient_id": f"{label}{p}", "y_true": label, "prob": 0.2 + 0.6 * label + 0.01 * (p + s)}
                for label in (0, 1) for p in range(patients_per_class) for s in range(3)]
        return pd.DataFrame(rows)

    few = external.external_metrics(predictions(2), 0.5)  # 4 patients: "[1.000, 1.000]" would be false certainty
    for level in (few["slice"], few["patient"]):
        assert level["ci_note"] == "too few patients to estimate"
        assert level["at_threshold"]["ci"]["roc_auc"] == [None, None]
    assert "too few patients to estimate" in external.summary_line({**few, "name": "tiny"})
    enough = external.external_metrics(predictions(5), 0.5)
    assert "ci_note" not in enough["patient"] and enough["patient"]["at_threshold"]["ci"]["roc_auc"][0] is not None
