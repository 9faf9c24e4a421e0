"""Calibration (core.inference.calibration): fitted on validation only, it makes an
over-confident model's test probabilities honest (lower ECE) without changing
a single decision; stored with the run and refitted when its predictions change."""
import os
import time

import numpy as np
import pandas as pd
import pytest

from core.inference import calibration
from core.base import files


def overconfident_predictions(seed: int = 0, n_val: int = 150, n_test: int = 300) -> pd.DataFrame:
    """A model whose logit is 4x the true log-odds plus 1: confident and
    biased towards positive, as a fine-tuned ResNet's softmax is."""
    rng = np.random.default_rng(seed)
    frames = []
    for split, n in (("val", n_val), ("test", n_test)):
        true_logit = rng.normal(0, 2, n)
        y = (rng.random(n) < calibration.sigmoid(true_logit)).astype(int)
        prob = calibration.sigmoid(4 * true_logit + 1)
        frames.append(pd.DataFrame({"path": [f"{split}/{i}.png" for i in range(n)], "y_true": y,
                                    "prob": prob, "split": split}))
    return pd.concat(frames, ignore_index=True)


def test_calibration_lowers_test_ece_and_keeps_every_decision():
    predictions = overconfident_predictions()
    threshold = 0.6
    fitted = calibration.fit(predictions, threshold)
    test = predictions[predictions.split == "test"]

    assert fitted.method in ("temperature", "platt")
    assert fitted.a == pytest.approx(0.25, abs=0.1)  # undoes the 4x over-confidence
    before = calibration.expected_calibration_error(test.y_true, test.prob)
    after = calibration.expected_calibration_error(test.y_true, fitted.apply(test.prob))
    assert after < before / 2
    assert fitted.test_ece["before"] == pytest.approx(before) and fitted.test_ece["after"] == pytest.approx(after)
    # Increasing map: the decision at the calibrated threshold is the raw decision, scan by scan.
    all_prob = predictions.prob.to_numpy()
    np.testing.assert_array_equal(all_prob >= threshold, fitted.apply(all_prob) >= fitted.threshold)
    # Isotonic is scored for the record but never chosen (it would merge probabilities).
    assert set(fitted.cv_log_loss) == {"none", "temperature", "platt", "isotonic"}
    low, high = fitted.borderline
    assert low <= fitted.threshold <= high


def test_fit_ignores_the_test_split():
    predictions = overconfident_predictions()
    shuffled = predictions.copy()
    test_rows = shuffled.split == "test"
    shuffled.loc[test_rows, "y_true"] = 1 - shuffled.loc[test_rows, "y_true"]
    assert calibration.fit(shuffled, 0.5).a == calibration.fit(predictions, 0.5).a


def test_saturated_probabilities_stay_finite_and_ordered():
    fitted = calibration.Calibration(method="platt", a=0.3, b=-0.2)
    out = fitted.apply([0.0, 1e-30, 0.5, 1.0])
    assert np.all(np.isfinite(out)) and np.all(np.diff(out) >= 0) and 0 < out[0] < out[-1] < 1


def test_single_class_validation_is_left_uncalibrated():
    predictions = overconfident_predictions()
    predictions.loc[predictions.split == "val", "y_true"] = 1
    fitted = calibration.fit(predictions, 0.5)
    assert fitted.method == "none" and "single class" in fitted.note
    assert fitted.apply(0.3) == pytest.approx(0.3)


def test_reliability_table_and_ece_by_hand():
    table = calibration.reliability_table([0, 1, 1, 1], [0.05, 0.95, 0.95, 0.55])
    assert table["n"].tolist() == [1, 1, 2]
    assert table["observed"].tolist() == [0.0, 1.0, 1.0]
    # |0 - 0.05| * 1 + |1 - 0.55| * 1 + |1 - 0.95| * 2, over 4 scans
    assert calibration.expected_calibration_error([0, 1, 1, 1], [0.05, 0.95, 0.95, 0.55]) == pytest.approx(0.15)


def test_for_run_stores_the_fit_and_refits_new_predictions(tmp_path):
    predictions = overconfident_predictions()
    files.write_csv(tmp_path / "predictions.csv", predictions)
    files.write_json(tmp_path / "metrics.json", {"threshold": {"value": 0.6, "method": "youden"}})
    first = calibration.for_run(tmp_path)
    stored = files.read_json(tmp_path / calibration.FILE)
    assert stored["a"] == first.a and stored["threshold"] == pytest.approx(first.threshold)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]

    time.sleep(0.01)
    files.write_csv(tmp_path / "predictions.csv", overconfident_predictions(seed=1))
    assert calibration.for_run(tmp_path).a != first.a  # predictions newer than the fit: refitted
    assert calibration.for_run(tmp_path / "nowhere").method == "none"


@pytest.mark.parametrize("prob, shown", [(0.0, "<1%"), (0.004, "<1%"), (0.5, "50%"), (0.372, "37%"),
                                         (0.996, ">99%"), (1.0, ">99%")])
def test_percent_never_claims_certainty(prob, shown):
    assert calibration.percent(prob) == shown
