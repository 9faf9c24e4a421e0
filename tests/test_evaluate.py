import json
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from core.evaluation.classification import METRICS, _weighted_metrics, binary_metrics, bootstrap_ci, choose_threshold, evaluate_predictions, resolution_bias
from core.evaluation.folds import cross_validation_summary
from core.evaluation.tables import confusion_frame, metrics_table, pr_points, roc_points

# Ten hand-made cases; at threshold 0.5: tp=3 (0.9, 0.8, 0.6), fn=2 (0.4, 0.2),
# fp=1 (0.7), tn=4 (0.1, 0.3, 0.45, 0.05).
Y = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
P = np.array([0.9, 0.8, 0.6, 0.4, 0.2, 0.7, 0.1, 0.3, 0.45, 0.05])


def synthetic(n, seed, separation=1.5):
    """Labels and probabilities of a decent but imperfect classifier."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    prob = 1 / (1 + np.exp(-(rng.normal(size=n) + separation * (2 * y - 1))))
    return y, prob


def predictions_frame(seed=0, n_val=120, n_test=150):
    y_val, p_val = synthetic(n_val, seed)
    y_test, p_test = synthetic(n_test, seed + 1)
    return pd.DataFrame({
        "path": [f"img{i}.png" for i in range(n_val + n_test)],
        "y_true": np.r_[y_val, y_test],
        "prob": np.r_[p_val, p_test],
        "split": ["val"] * n_val + ["test"] * n_test,
    })


def test_binary_metrics_match_hand_counts_and_sklearn():
    m = binary_metrics(Y, P, threshold=0.5)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 2, 1, 4)
    assert m["n"] == 10 and m["threshold"] == 0.5
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 5)
    assert m["specificity"] == pytest.approx(m["tn"] / (m["tn"] + m["fp"]))
    assert m["f1"] == pytest.approx(2 * 0.75 * 0.6 / (0.75 + 0.6))

    y_pred = (P >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(accuracy_score(Y, y_pred))
    assert m["precision"] == pytest.approx(precision_score(Y, y_pred))
    assert m["recall"] == pytest.approx(recall_score(Y, y_pred))
    assert m["f1"] == pytest.approx(f1_score(Y, y_pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(Y, P))
    assert m["pr_auc"] == pytest.approx(average_precision_score(Y, P))
    # Positive when prob >= threshold.
    assert binary_metrics(Y, P, threshold=0.6)["tp"] == 3


def test_one_class_gives_none_auc_and_no_crash():
    m = binary_metrics([0, 0, 0], [0.2, 0.7, 0.1])
    assert m["roc_auc"] is None and m["pr_auc"] is None
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["precision"] == 0.0 and m["recall"] == 0.0
    ci = bootstrap_ci([1, 1, 1, 1], [0.9, 0.8, 0.3, 0.6], n_boot=50)
    assert ci["roc_auc"] == [None, None] and ci["pr_auc"] == [None, None]
    assert ci["recall"][0] <= 0.75 <= ci["recall"][1]


def test_resampled_metrics_equal_sklearn_on_the_resampled_cases():
    y, prob = synthetic(60, seed=3)
    prob = np.round(prob, 1)  # ties, which the vectorised curves must group like sklearn
    counts = np.random.default_rng(0).multinomial(60, np.full(60, 1 / 60), size=4)
    resampled = _weighted_metrics(y, prob, 0.5, counts)
    for i, case_counts in enumerate(counts):
        expected = binary_metrics(np.repeat(y, case_counts), np.repeat(prob, case_counts))
        for name in METRICS:
            assert resampled[name][i] == pytest.approx(expected[name]), name


def test_ci_contains_estimate_narrows_with_more_cases_and_is_reproducible():
    y_small, p_small = synthetic(60, seed=1)
    y_large, p_large = synthetic(2000, seed=1)
    small = bootstrap_ci(y_small, p_small, n_boot=300, seed=0)
    large = bootstrap_ci(y_large, p_large, n_boot=300, seed=0)
    point = binary_metrics(y_small, p_small)
    for name in METRICS:
        low, high = small[name]
        assert low <= point[name] <= high, name
        assert large[name][1] - large[name][0] < high - low, name
    assert bootstrap_ci(y_small, p_small, n_boot=300, seed=0) == small
    assert bootstrap_ci(y_small, p_small, n_boot=300, seed=1) != small


def test_bootstrap_is_fast():
    y, prob = synthetic(200, seed=0)
    start = time.perf_counter()
    bootstrap_ci(y, prob, n_boot=1000)
    assert time.perf_counter() - start < 2


def test_choose_threshold_methods_and_ties():
    # Perfectly separated: only thresholds in (0.3, 0.7] are optimal; the
    # observed one closest to 0.5 is 0.7 (0.35 and 0.3 misclassify a case).
    y = [0, 0, 0, 1, 1, 1]
    p = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]
    assert choose_threshold(y, p, "youden") == pytest.approx(0.7)
    assert choose_threshold(y, p, "f1") == pytest.approx(0.7)
    # Raising the positive at 0.4 to 0.47 makes 0.47 the best Youden cut.
    assert choose_threshold(Y, np.where(P == 0.4, 0.47, P), "youden") == pytest.approx(0.47)
    for method in ("youden", "f1"):
        assert 0 < choose_threshold([0, 1], [0.0, 1.0], method) < 1
    assert choose_threshold([1, 1], [0.2, 0.9]) == 0.5
    with pytest.raises(ValueError):
        choose_threshold(Y, P, "accuracy")


def test_threshold_is_chosen_on_val_only():
    frame = predictions_frame()
    base = evaluate_predictions(frame, n_boot=50)
    assert base["threshold"]["chosen_on"] == "val"
    assert base["threshold"]["value"] == choose_threshold(
        frame.y_true[frame.split == "val"], frame.prob[frame.split == "val"])

    is_test = frame.split == "test"
    test_changed = frame.copy()
    test_changed.loc[is_test, "prob"] = np.random.default_rng(9).random(is_test.sum())
    assert evaluate_predictions(test_changed, n_boot=50)["threshold"] == base["threshold"]

    val_changed = frame.copy()
    val_changed.loc[~is_test, "prob"] = predictions_frame(seed=7).prob[~is_test]
    assert evaluate_predictions(val_changed, n_boot=50)["threshold"]["value"] != base["threshold"]["value"]


def test_evaluate_predictions_structure_and_json():
    result = evaluate_predictions(predictions_frame(), n_boot=100, threshold_method="f1")
    assert result["threshold"]["method"] == "f1"
    threshold = result["threshold"]["value"]
    assert result["val"]["at_0.5"]["threshold"] == 0.5
    assert result["val"]["at_threshold"]["threshold"] == threshold
    assert "ci" not in result["val"]["at_threshold"]
    for at in ("at_0.5", "at_threshold"):
        assert set(result["test"][at]["ci"]) == set(METRICS)
        assert result["test"][at]["n"] == 150
    assert json.loads(json.dumps(result)) == result

    table = metrics_table(result)
    assert list(table.index) == list(METRICS)
    assert list(table.columns) == ["value", "ci_low", "ci_high"]
    assert table.loc["f1", "value"] == result["test"]["at_threshold"]["f1"]
    assert table.loc["roc_auc", "ci_low"] == result["test"]["at_threshold"]["ci"]["roc_auc"][0]
    assert metrics_table(result, split="val", at="at_0.5")["ci_low"].isna().all()


def test_missing_splits_are_left_out_and_threshold_defaults():
    frame = predictions_frame()
    test_only = evaluate_predictions(frame[frame.split == "test"], n_boot=20)
    assert test_only["threshold"] == {"value": 0.5, "method": "youden", "chosen_on": "default"}
    assert "val" not in test_only and "test" in test_only
    val_only = evaluate_predictions(frame[frame.split == "val"], n_boot=20)
    assert "test" not in val_only and val_only["threshold"]["chosen_on"] == "val"


def test_curves_and_confusion_frame():
    roc = roc_points(Y, P)
    assert list(roc.columns) == ["fpr", "tpr", "threshold"]
    assert np.trapezoid(roc.tpr, roc.fpr) == pytest.approx(roc_auc_score(Y, P))
    pr = pr_points(Y, P)
    assert list(pr.columns) == ["recall", "precision", "threshold"]
    assert pr.recall.between(0, 1).all() and pr.precision.between(0, 1).all()

    confusion = confusion_frame(Y, P, 0.5)
    assert list(confusion.index) == ["true NonCOVID", "true COVID"]
    assert list(confusion.columns) == ["predicted NonCOVID", "predicted COVID"]
    assert confusion.to_numpy().tolist() == [[4, 1], [2, 3]]


def test_resolution_bias_is_measured_within_each_class():
    # Within each class, lower-resolution scans get higher probabilities
    # (rho -1) in one split and are unrelated (rho near 0) in the other.
    rng = np.random.default_rng(0)
    pixels = rng.uniform(1e4, 1e6, 80)
    y_true = np.tile([0, 1], 40)
    split = np.repeat(["test", "val"], 40)
    prob = np.where(split == "test", 1 - pixels / 2e6, rng.uniform(0, 1, 80)) * 0.5 + 0.5 * y_true
    predictions = pd.DataFrame({"y_true": y_true, "prob": prob, "split": split})
    bias = resolution_bias(predictions, pixels)
    assert list(zip(bias.split, bias.y_true, bias.n)) == [("test", 0, 20), ("test", 1, 20), ("val", 0, 20),
                                                          ("val", 1, 20)]
    np.testing.assert_allclose(bias.rho[:2], -1.0)
    assert (bias.rho[2:].abs() < 0.5).all()
    # One size for every slice: no correlation to speak of, not an error.
    assert resolution_bias(predictions, np.full(80, 5e4)).rho.isna().all()


def test_cross_validation_summary_scores_each_fold_and_the_pooled_out_of_fold_predictions():
    rng = np.random.default_rng(0)

    def fold_run(first, n):  # one fold's run: its own validation images, and the shared test images
        y = np.tile([0, 1], n // 2)
        val = pd.DataFrame({"path": [f"img{i}" for i in range(first, first + n)], "y_true": y,
                            "prob": np.clip(0.3 * y + rng.uniform(0, 0.7, n), 0, 1), "split": "val"})
        test = pd.DataFrame({"path": ["t0", "t1"], "y_true": [0, 1], "prob": [0.9, 0.1], "split": "test"})
        return pd.concat([val, test], ignore_index=True)

    runs = [fold_run(0, 40), fold_run(40, 40), fold_run(80, 40)]
    summary = cross_validation_summary(runs, n_boot=200)
    vals = [r[r.split == "val"] for r in runs]
    expected = [roc_auc_score(v.y_true, v.prob) for v in vals]
    np.testing.assert_allclose(summary["fold_roc_auc"], expected)
    assert summary["mean_roc_auc"] == pytest.approx(np.mean(expected))
    assert summary["std_roc_auc"] == pytest.approx(np.std(expected, ddof=1))
    pooled = pd.concat(vals)
    assert summary["pooled_roc_auc"] == pytest.approx(roc_auc_score(pooled.y_true, pooled.prob))
    low, high = summary["pooled_ci"]
    assert low < summary["pooled_roc_auc"] < high
    assert summary["n_images"] == 120  # the (inverted) test predictions play no part

    with pytest.raises(ValueError, match="img0 validates in more than one fold"):
        cross_validation_summary([runs[0], runs[0]])
