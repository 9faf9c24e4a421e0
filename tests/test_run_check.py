"""Damaged run folders (core.runs.checks): listed as damaged with the file and
the reason, never breaking the listing or the CLI for the other runs;
evaluating or predicting with one is refused with one line naming the file."""
import json
import os
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from core.evaluation import classification
from core.runs import lock
from core.runs import checks
from core.runs import catalogue
from core.runs import storage
from core.base import files
from core.cli.main import main
from core.runs.train_config import TrainConfig


def completed_run(runs_root, name, data_dir):
    """A completed run's files as training writes them (no model needed here)."""
    run_dir = storage.new_run(asdict(TrainConfig(data_dir=str(data_dir))), name=name, runs_root=runs_root)
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 10)
    predictions = pd.DataFrame({"path": [f"COVID/{i}.png" for i in range(20)], "y_true": y,
                                "prob": np.clip(0.4 * y + rng.uniform(0, 0.6, 20), 0, 1).round(4),
                                "split": ["val"] * 10 + ["test"] * 10})
    files.write_csv(run_dir / "predictions.csv", predictions)
    files.write_json(run_dir / "metrics.json", classification.evaluate_predictions(predictions, n_boot=20))
    (run_dir / "model.keras").write_bytes(b"PK\x03\x04 not loaded: refused before")
    storage.set_status(run_dir, "completed")
    return run_dir


def edit_json(name, change):
    def damage(run_dir):
        path = run_dir / name
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return damage


def write(name, text):
    return lambda run_dir: (run_dir / name).write_text(text)


def link_out(path):  # the file moved out of the run folder, a link to it left in its place
    elsewhere = path.parent.parent / f"{path.parent.name}-{path.name}"
    path.replace(elsewhere)
    path.symlink_to(elsewhere)


def cut_predictions(run_dir):  # a truncated predictions.csv: the header and 3 rows
    path = run_dir / "predictions.csv"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:4]))


DAMAGE = {
    "empty status": (write("status.json", ""), "status.json", "empty file"),
    "config not JSON": (write("config.json", "{backbone: resnet50"), "config.json", "not JSON"),
    "config a list": (write("config.json", "[1, 2]"), "config.json", "expected a JSON object, found list"),
    "impossible config": (edit_json("config.json", lambda c: {**c, "input_size": -5}), "config.json",
                          "input_size -5 must be between 32 and 1024"),
    "config of the wrong type": (edit_json("config.json", lambda c: {**c, "batch_size": "big"}), "config.json",
                                 "batch_size 'big' is not a whole number"),
    "unknown state": (edit_json("status.json", lambda s: {**s, "state": "exploded"}), "status.json",
                      "state 'exploded' is not one of running"),
    "metrics not JSON": (write("metrics.json", '{"threshold": '), "metrics.json", "not JSON"),
    "threshold not a number": (edit_json("metrics.json", lambda m: {**m, "threshold": {"value": "high"}}),
                               "metrics.json", "threshold.value 'high' is not a number"),
    "truncated predictions": (cut_predictions, "predictions.csv", "3 val rows, but metrics.json counted 10"),
    "predictions without prob": (lambda d: files.write_csv(d / "predictions.csv",
                                                          storage.read_predictions(d).drop(columns="prob")),
                                 "predictions.csv", "missing column(s) prob"),
    "empty predictions": (write("predictions.csv", ""), "predictions.csv", "empty file"),
    "predictions deleted": (lambda d: (d / "predictions.csv").unlink(), "predictions.csv",
                            "missing in a completed run"),
    # Found by the probe of issue 29; tests/test_fuzz.py generates more of each class.
    "config nested deep": (write("config.json", '{"a": ' + "[" * 50_000 + "]" * 50_000 + "}"), "config.json",
                           "nested deeper than 32 levels"),
    "status nested deep": (write("status.json", "[" * 50_000 + "]" * 50_000), "status.json",
                           "nested deeper than 32 levels"),
    "a list for a number": (edit_json("config.json", lambda c: {**c, "dropout": [0.3]}), "config.json",
                            "dropout [0.3] is not a number"),
    "negative seed": (edit_json("config.json", lambda c: {**c, "seed": -1}), "config.json",
                      "seed -1 must be between 0 and 4294967295"),
    "calibration that falls": (write("calibration.json", json.dumps({
        "method": "platt", "a": -1, "b": 0, "raw_threshold": 0.5, "borderline_raw": [0.4, 0.6]})),
        "calibration.json", "a -1 must be in (0, inf)"),
    "scan settings unknown": (write("scan.json", '{"aggregation": "max", "threshold": 0.5}'), "scan.json",
                              "aggregation 'max' is not one of mean, top3, noisy_or"),
    "model a FIFO": (lambda d: ((d / "model.keras").unlink(), os.mkfifo(d / "model.keras")), "model.keras",
                     "a FIFO, not a regular file"),
    "predictions a link out": (lambda d: link_out(d / "predictions.csv"), "predictions.csv",
                               "a link to outside the run folder"),
}


@pytest.fixture
def two_runs(tmp_path, monkeypatch):
    """An intact run and a newer one to damage, under $COVIDCT_ARTIFACTS."""
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path))
    runs_root = tmp_path / "runs"
    intact = completed_run(runs_root, "a-intact", tmp_path)
    damaged = completed_run(runs_root, "b-damaged", tmp_path)
    return intact, damaged


def test_an_intact_run_has_no_problems(two_runs, tmp_path):
    for run_dir in two_runs:
        assert catalogue.load_run(run_dir)["problems"] == []
        assert checks.require_intact(run_dir) == run_dir
    # Trained elsewhere: a data folder and a cluster this machine lacks are no damage.
    edit_json("config.json", lambda c: {**c, "data_dir": str(tmp_path / "moved"), "strategy": "multiworker",
                                        "setting_of_a_newer_version": 1})(two_runs[1])
    assert catalogue.load_run(two_runs[1])["problems"] == []


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_run_is_listed_as_damaged_and_refused(two_runs, capsys, case):
    intact, damaged = two_runs
    damage, file_name, reason = DAMAGE[case]
    damage(damaged)

    listed = {run["id"]: run for run in catalogue.list_runs()}
    assert listed[intact.name]["problems"] == []
    (problem, *_) = listed[damaged.name]["problems"]
    assert problem.startswith(f"{file_name}: ") and reason in problem
    table = catalogue.compare_runs(list(listed.values())).set_index("run")
    assert table.loc[damaged.name, "state"] == "damaged" and reason in table.loc[damaged.name, "problem"]
    assert table.loc[intact.name, "state"] == "completed"

    assert main(["runs"]) == 0
    assert f"{damaged.name}: {file_name}: " in capsys.readouterr().out
    for command in (["evaluate", "--run", damaged.name, "--n-boot", "20"],
                    ["predict", "--run", damaged.name, "scan.png"]):
        assert main(command) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"error: {damaged / file_name}: ") and reason in line
    # The other run, and "latest", still work: the newest intact completed run.
    assert main(["evaluate", "--n-boot", "20"]) == 0
    assert f"run {intact.name}:" in capsys.readouterr().out


def test_an_empty_training_lock_left_by_a_kill_is_stale(tmp_path):
    import os
    import time

    lock_file = tmp_path / ".training.lock"
    lock_file.write_text("")  # killed between creating the lock and writing it
    assert lock.active_training(tmp_path) == {"pid": None, "run": "starting"}  # maybe being written now
    old = time.time() - 60
    os.utime(lock_file, (old, old))
    assert lock.active_training(tmp_path) is None
    lock.acquire_training_lock("next", tmp_path)
    lock.release_training_lock(tmp_path)


@pytest.mark.parametrize("page", ["streamlit_app.py", "app_pages/train.py", "app_pages/evaluate.py",
                                  "app_pages/misclassified.py", "app_pages/predict.py"])
def test_app_pages_render_beside_damaged_runs(page, tmp_path, monkeypatch, data_dir):
    """One run of each kind of damage, and nothing else: the pages render, and
    those that need a usable run say there is none."""
    from test_app import assert_no_exception, open_page, texts

    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path))
    for case, (damage, _, _) in DAMAGE.items():
        damage(completed_run(tmp_path / "runs", case.replace(" ", "-"), data_dir))
    at = open_page(page)
    assert_no_exception(at)
    if page == "app_pages/evaluate.py":
        assert "Train one first" in texts(at.info)
    if page == "app_pages/predict.py":  # nothing deployed, and no damaged run is offered in its place
        assert "No model is deployed yet" in texts(at.info)
        assert "No completed run is fit to deploy" in texts(at.markdown)
