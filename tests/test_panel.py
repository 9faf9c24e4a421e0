"""The external panel (core.inference.panel): every set scored once per model,
slice and patient figures side by side, and a missing set named."""
import os
import shutil

import pytest

from core.base import files, paths
from core.cli.common import EXIT_BAD_INPUT
from core.cli.main import main
from core.evaluation import classification
from core.inference import external, panel


@pytest.fixture
def run_copy(trained_run, tmp_path, monkeypatch):
    for folder in paths.panel_dirs():
        if not folder.is_dir():
            pytest.skip(f"external panel set not found: {folder}")
    monkeypatch.setattr(classification, "N_BOOT", 20)
    run_dir = tmp_path / trained_run.name
    shutil.copytree(trained_run, run_dir)
    return run_dir


def test_each_set_is_scored_once_and_reported_per_slice_and_patient(run_copy):
    results = panel.panel_results(run_copy)
    assert sorted(results) == sorted(folder.name for folder in paths.panel_dirs())
    stored = {name: os.path.getmtime(external.results_dir(run_copy, name) / "metrics.json") for name in results}
    panel.panel_results(run_copy)  # a current result is reused, not scored again
    assert stored == {name: os.path.getmtime(external.results_dir(run_copy, name) / "metrics.json")
                      for name in results}

    table = panel.panel_table(run_copy, results)
    assert set(table["level"]) == {"slices", "patients"}
    patients = table[(table["set"] == "COVID-CT-MD-sample") & (table["level"] == "patients")]
    assert patients["n"].item() == 6  # two COVID, two pneumonia, two normal patients
    assert table["ece"].between(0, 1).all()
    # Two and four patients a class: too few for an interval (evaluation.patient_level.MIN_PATIENTS_FOR_CI).
    assert table["ci_low"].isna().all() and table["ci_high"].isna().all()


def test_a_missing_set_is_named(run_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDCT_PANEL", str(tmp_path / "no-such-hospital"))
    with pytest.raises(ValueError, match="no-such-hospital: external panel set not found"):
        panel.panel_results(run_copy)


def test_the_cli_prints_the_panel(run_copy, capsys):
    assert main(["panel", "--run", str(run_copy)]) == 0
    out = capsys.readouterr().out
    assert "SY575-COVID19-CT" in out and "COVID-CT-MD-sample" in out and "patients" in out


def test_a_run_stopped_before_it_evaluated_is_refused_not_scored_at_a_default_threshold(run_copy, capsys):
    # A run cancelled while evaluating keeps its model.keras but has no validation threshold or calibration.
    (run_copy / "metrics.json").unlink()
    status = files.read_json(run_copy / "status.json")
    files.write_json(run_copy / "status.json", {**status, "state": "cancelled"})
    assert main(["panel", "--run", str(run_copy)]) == EXIT_BAD_INPUT
    assert "no validation threshold or calibration (metrics.json missing; its state: cancelled)" in \
        capsys.readouterr().err
    assert not external.list_external(run_copy)  # nothing scored, nothing stored
