"""The Sites page and Predict's site choice (AppTest, no browser): the page
says what to do without a deployed model; with one, the site check of a
folder gives its verdict in words, a profile fitted on too few patients is
refused saying how many more are needed, a stored profile is listed there and
on Predict (whose probability then says it is calibrated for the site), and
an adaptation is refused while another training holds the lock."""
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_app import (assert_no_exception, button, deployed, empty_artifacts, open_page,  # noqa: F401 (fixtures)
                      run_id, texts)

from core.base import paths
from core.inference import calibration, site_store
from core.jobs import background
from core.runs import lock, storage
from ui import navigation

SY575 = paths.SHARED / "data" / "external" / "SY575-COVID19-CT"
SITE = "hospital-b"


@pytest.fixture
def sy575():
    if not SY575.is_dir():
        pytest.skip(f"{SY575} not found")
    return SY575


def figures(value: float) -> dict:
    return {"roc_auc": value, "sensitivity": value, "specificity": value, "ece": 0.05, "ci": None,
            "ci_note": "too few patients to estimate"}


def store_profile(run_dir: Path, name: str = SITE) -> None:
    """A profile written as site_profile.fit_profile writes one, without fitting (the run's own calibration)."""
    fitted = calibration.for_run(run_dir)
    profile = {"name": name, "run": run_dir.name, "fitted": storage.now(), "sources": [str(SY575)],
               "class_map": {}, "labels": {"negative": "NonCOVID", "positive": "COVID"}, "slices": 40, "refused": 0,
               "problems": [], "patients": {"total": 10, "negative": 5, "positive": 5},
               "threshold_method": "youden", "calibration": fitted.to_dict(), "raw_threshold": fitted.raw_threshold,
               "threshold": fitted.threshold,
               "scan": {"aggregation": "mean", "threshold_method": "youden", "patients": 10, "threshold": 0.5},
               "cross_fitted": {"folds": 3, "deployed": figures(0.8), "site": figures(0.85)},
               "minimums": {"patients": 10, "per_class": 3, "per_class_for_ci": 5}}
    site_store.store(site_store.profile_dir(run_dir, name), profile, pd.DataFrame({"relpath": ["a.png"]}))


@pytest.fixture
def profile(deployed, trained_run):  # noqa: F811
    store_profile(trained_run)
    yield SITE
    shutil.rmtree(trained_run / site_store.SITES, ignore_errors=True)


def submit(at, label: str):
    button(at, label).click()
    return at.run()


def test_sites_without_a_deployed_model_says_what_to_do(empty_artifacts):  # noqa: F811
    at = open_page(navigation.SITES)
    assert_no_exception(at)
    assert "No model is deployed" in texts(at.info)
    assert not at.error


def test_site_check_gives_a_verdict_and_a_small_site_gets_no_profile(deployed, sy575):  # noqa: F811
    at = open_page(navigation.SITES)
    assert_no_exception(at)
    assert [s.value for s in at.subheader] == ["Does the model hold at your site?", "Site profiles",
                                               "Adapt the model to your site"]
    at.text_input(key="check_folder").input(str(sy575))
    at = submit(at, "Check these scans")
    assert_no_exception(at)
    verdicts = texts(at.error) + texts(at.success) + texts(at.info)
    assert any(words in verdicts for words in ("differ from the scans", "Similar:", "Too few scans",
                                               "validation set is too small")), verdicts
    assert any(e.label == "The check's figures" for e in at.expander)

    at.text_input(key="profile_name").input(SITE)
    at.text_area(key="profile_folders").input(str(sy575))
    at = submit(at, "Fit the profile")
    assert_no_exception(at)
    refusal = texts(at.error)
    assert "Profile not fitted" in refusal and "more patients" in refusal, refusal


def test_a_missing_folder_is_named(deployed, tmp_path):  # noqa: F811
    at = open_page(navigation.SITES)
    at.text_input(key="check_folder").input(str(tmp_path / "nowhere"))
    at = submit(at, "Check these scans")
    assert_no_exception(at)
    assert "Cannot check this folder" in texts(at.error) and "not found" in texts(at.error)


def test_a_stored_profile_is_listed_and_chosen_on_predict(profile, trained_run, data_dir):
    at = open_page(navigation.SITES)
    assert_no_exception(at)
    assert SITE in at.dataframe[0].value["name"].tolist()
    assert any(m.value.startswith("Site profile") and "fitted on 10 patients" in m.value for m in at.markdown)

    at = open_page(navigation.PREDICT)
    assert_no_exception(at)
    assert at.selectbox(key="site").options == ["none: the model's own calibration", SITE]
    row = storage.read_predictions(trained_run).query("split == 'test'").iloc[0]
    content = (data_dir / row["path"]).read_bytes()
    at.file_uploader(key="uploads").set_value([("slice.png", content, "image/png")]).run()
    assert any("the model's own calibration" in m.value for m in at.markdown if m.value.startswith("Decision:"))
    at.selectbox(key="site").select(SITE).run()
    assert_no_exception(at)
    assert any(f"calibrated for site {SITE}" in m.value for m in at.markdown if m.value.startswith("Decision:"))


def test_the_page_refuses_an_adaptation_while_another_training_runs(deployed, sy575):  # noqa: F811
    lock.acquire_training_lock("someone-else")
    try:
        at = open_page(navigation.SITES)
        at.text_input(key="adapt_name").input(SITE)
        at.text_area(key="adapt_folders").input(str(sy575))
        at = submit(at, "Adapt the model to this site")
        assert_no_exception(at)
        assert "Not started" in texts(at.error) and "someone" in texts(at.error) and "already running" in texts(at.error)
    finally:
        lock.release_training_lock()


def test_launch_adaptation_holds_the_lock_and_refuses_a_second_training(tmp_path, monkeypatch, sy575):
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path / "artifacts"))
    started = []

    class FakeChild:
        pid = os.getpid()  # alive, like a child still importing TensorFlow

    monkeypatch.setattr(background.subprocess, "Popen", lambda *a, **k: started.append((a, k)) or FakeChild())
    lock.acquire_training_lock("run-a", tmp_path)
    with pytest.raises(lock.TrainingBusy, match="run-a"):
        background.launch_adaptation([sy575], SITE, runs_root=tmp_path)
    assert not started
    lock.release_training_lock(tmp_path)

    background.launch_adaptation([sy575], SITE, runs_root=tmp_path)
    (args,), options = started[0]
    assert args[-4:] == ["adapt", str(sy575), "--site", SITE]
    assert Path(options["stdout"].name) == tmp_path / "artifacts" / "sites" / SITE / "adapt.log"
    assert lock.active_training(tmp_path)["run"] == f"site-{SITE}"
    with pytest.raises(lock.TrainingBusy, match=f"site-{SITE}"):
        background.launch_adaptation([sy575], "another", runs_root=tmp_path)
    with pytest.raises(ValueError, match="not found"):
        background.launch_adaptation([tmp_path / "nowhere"], "third", runs_root=tmp_path)


def test_predict_checks_the_site_once_enough_scans_were_uploaded(deployed, trained_run, data_dir):  # noqa: F811
    """Three scans of 7 slices, uploaded one after the other: after the first the
    check says how many more it needs; after the third (3 patients, 21 slices) it
    gives a verdict, from the features kept in the session (not the images)."""
    at = open_page(navigation.PREDICT)
    at.checkbox(key="one_scan").check().run()
    slices = sorted((data_dir / "COVID").rglob("*.png"))[:21]
    for scan in range(3):
        batch = [(f"scan{scan}-{i}.png", path.read_bytes(), "image/png")
                 for i, path in enumerate(slices[7 * scan:7 * scan + 7])]
        at.file_uploader(key="uploads").set_value(batch).run()
        assert_no_exception(at)
        shown = texts(at.error) + texts(at.success) + texts(at.info)
        if scan == 0:
            assert "Too few scans to check (1 patient, 7 slices)" in shown, shown
            assert "13 more slices and 2 more patients" in shown, shown
    kept = at.session_state["site_check_uploads"][""]
    assert len(kept) == 3 and all(set(entry) == {"features", "raw", "refused", "patient"} for entry in kept.values())
    assert "Too few scans" not in shown and any(words in shown for words in (
        "differ from the scans this model was tested on", "Similar:", "validation set is too small")), shown
