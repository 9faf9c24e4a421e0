"""One number per fact, fast: every probability shown goes through one
calibration (core.inference.site_store.calibration_of, calibration.
calibrated_predictions), the threshold stays put across pages, and the hints
say in words what the figures suggest (several slices uploaded together,
a lean on resolution)."""
import numpy as np
import pandas as pd
import pytest

from core.data.scans import one_scan_offer
from core.evaluation import classification
from core.inference import calibration, external, site_store
from core.inference.calibration import Calibration
from test_app import assert_no_exception, open_page
from ui import navigation


# ---------------------------------------------------------------------------
# One calibration for every probability shown
# ---------------------------------------------------------------------------

def test_calibrated_predictions_put_stored_probabilities_on_the_thresholds_scale():
    fitted = Calibration(method="platt", a=0.5, b=0.4, raw_threshold=0.659)
    stored = pd.DataFrame({"path": ["a.png", "b.png", "c.png"], "y_true": [0, 1, 1],
                           "prob": [0.001, 0.659, 0.999]})
    shown = calibration.calibrated_predictions(stored, fitted)
    assert shown["raw_prob"].tolist() == stored["prob"].tolist()  # the model's own, kept
    assert shown["prob"].to_numpy() == pytest.approx(fitted.apply(stored["prob"]))
    assert shown["prob"][0] > 0.01  # a raw <1% is not what the calibrated scale says
    # The same decisions on either scale: the one at the raw threshold sits on the calibrated one.
    assert shown["prob"][1] == pytest.approx(fitted.threshold)
    assert ((shown["prob"] >= fitted.threshold) == (stored["prob"] >= fitted.raw_threshold)).all()


def test_calibration_of_is_the_runs_own_without_a_site_and_the_profiles_with_one(trained_run, tmp_path):
    import shutil

    run_dir = tmp_path / trained_run.name
    shutil.copytree(trained_run, run_dir)
    assert site_store.calibration_of(run_dir) == calibration.for_run(run_dir)
    site = Calibration(method="temperature", a=0.7, b=0.0, raw_threshold=0.3, borderline_raw=[0.2, 0.4], n_val=30)
    site_store.store(site_store.profile_dir(run_dir, "hospital-b"), {"calibration": site.to_dict()},
                     pd.DataFrame({"relpath": ["a.png"]}))
    assert site_store.calibration_of(run_dir, "hospital-b") == site
    assert site_store.calibration_of(run_dir, "hospital-b").threshold != calibration.for_run(run_dir).threshold


def test_predictor_and_pages_share_the_calibration(trained_run):
    from core.inference.predict import Predictor

    predictor = Predictor.from_run(trained_run)
    assert predictor.calibration == site_store.calibration_of(trained_run)
    image = np.full((64, 64, 3), 90, dtype=np.uint8)
    image[16:48, 8:28] = image[16:48, 36:56] = 20  # two dark "lungs"
    (prediction,) = predictor.predict_images([image], ["slice.png"])
    assert prediction.probability == pytest.approx(float(predictor.calibration.apply(prediction.raw_probability)))


def test_external_summary_quotes_the_threshold_on_the_scale_it_is_given():
    at = {"roc_auc": 0.7, "ci": {"roc_auc": [0.5, 0.9]}, "recall": 0.8, "specificity": 0.6, "accuracy": 0.7}
    metrics = {"name": "SY575", "threshold": 0.659, "slice": {"n": 48, "at_threshold": at}, "patient": None}
    assert "threshold 0.659 on the model's raw outputs" in external.summary_line(metrics)
    calibrated = external.summary_line(metrics, 0.575)
    assert "threshold 57% on the calibrated scale" in calibrated and "0.659" not in calibrated


@pytest.fixture
def run_id(trained_artifacts, trained_run):
    """The tiny run, the only one the app lists (COVIDCT_ARTIFACTS at it)."""
    return trained_run.name


# ---------------------------------------------------------------------------
# The threshold a page works at is the one it shows, on every page
# ---------------------------------------------------------------------------

def test_threshold_holds_across_switches_between_evaluate_and_misclassified(run_id):
    at = open_page(navigation.EVALUATE)
    at.slider(key=f"threshold_slider_{run_id}").set_value(0.321).run()
    for page in (navigation.MISCLASSIFIED, navigation.EVALUATE, navigation.MISCLASSIFIED, navigation.EVALUATE,
                 navigation.MISCLASSIFIED):
        at.switch_page(page).run()
        assert_no_exception(at)
        assert at.slider(key=f"threshold_slider_{run_id}").value == pytest.approx(0.321), page
        assert at.session_state[f"threshold_{run_id}"] == pytest.approx(0.321)
    assert any(" at threshold 0.321 " in c.value for c in at.caption)
    assert at.query_params["threshold"] == "0.321" and at.query_params["threshold_run"] == run_id


def test_a_new_session_takes_the_threshold_from_the_url_for_that_run_only(run_id, trained_run):
    from streamlit.testing.v1 import AppTest

    from test_app import ROOT, TIMEOUT

    def evaluate_with(params: dict) -> float:
        at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT)
        at.query_params.update(params)
        at.run().switch_page(navigation.EVALUATE).run()
        assert_no_exception(at)
        return at.slider(key=f"threshold_slider_{run_id}").value

    chosen = calibration.for_run(trained_run).threshold
    assert evaluate_with({"threshold": "0.42", "threshold_run": run_id}) == pytest.approx(0.42)
    assert evaluate_with({"threshold": "0.42", "threshold_run": "another-run"}) == pytest.approx(chosen)
    assert evaluate_with({"threshold": "7", "threshold_run": run_id}) == pytest.approx(chosen)
    assert evaluate_with({"threshold": "nan", "threshold_run": run_id}) == pytest.approx(chosen)


# ---------------------------------------------------------------------------
# Hints in words
# ---------------------------------------------------------------------------

def test_several_slices_uploaded_together_are_offered_as_one_scan():
    slices = [(f"slice-{i:02d}.png", b"png") for i in range(15)]
    assert one_scan_offer([]) is None and one_scan_offer(slices[:1]) is None
    offer = one_scan_offer(slices)
    assert offer.startswith("15 slices were uploaded together") and "one scan" in offer


def test_resolution_check_says_when_it_sees_a_warning_sign():
    names = {0: "NonCOVID", 1: "COVID"}
    bias = pd.DataFrame({"split": ["test", "test"], "y_true": [0, 1], "n": [50, 50], "rho": [-0.35, 0.05]})
    warning = classification.resolution_warning(bias, names)
    assert "NonCOVID ρ = -0.35" in warning and "|ρ| ≥ 0.3" in warning and "(COVID" not in warning and "0.05" not in warning
    calm = bias.assign(rho=[-0.29, float("nan")])
    assert classification.resolution_warning(calm, names) is None
