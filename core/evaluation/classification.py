"""Metrics for a binary classifier's predictions (COVID = label 1).

Everything returned is plain Python numbers, lists and dicts, so it can be
written with json.dumps and shown by the app and the CLI without conversion.
The operating threshold is chosen on the validation split and only applied to
the test split, so the test numbers stay an unbiased estimate.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

# Bootstrap resamples behind every confidence interval; read at each call, so
# that tests can make it small.
N_BOOT = 1000
METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc")


def as_arrays(y_true, prob):
    """Labels as a flat int array, probabilities as a flat float array."""
    y_true = np.asarray(y_true).astype(int).ravel()
    prob = np.asarray(prob, dtype=float).ravel()
    if y_true.shape != prob.shape:
        raise ValueError(f"y_true has {y_true.size} values but prob has {prob.size}")
    return y_true, prob


def has_both_classes(y_true) -> bool:
    return len(np.unique(y_true)) == 2


def binary_metrics(y_true, prob, threshold: float = 0.5) -> dict:
    """Metrics of `prob >= threshold` as the positive prediction.

    Returns {accuracy, precision, recall (sensitivity), specificity, f1,
    roc_auc, pr_auc (average precision), tn, fp, fn, tp, threshold, n} as
    plain floats/ints. roc_auc and pr_auc are None when only one class is present.
    """
    y_true, prob = as_arrays(y_true, prob)
    y_pred = (prob >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    both_classes = has_both_classes(y_true)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(recall_score(y_true, y_pred, zero_division=0)),
        # Specificity is the recall of the negative class.
        "specificity": float(recall_score(y_true, y_pred, pos_label=0, zero_division=0)),
        "f1": float(f1_score(y_true, y_pred, zero_division=0)),
        "roc_auc": float(roc_auc_score(y_true, prob)) if both_classes else None,
        "pr_auc": float(average_precision_score(y_true, prob)) if both_classes else None,
        "tn": int(tn),
        "fp": int(fp),
        "fn": int(fn),
        "tp": int(tp),
        "threshold": float(threshold),
        "n": int(y_true.size),
    }


def _divide(numerator, denominator):
    """numerator / denominator, 0 where the denominator is 0 (sklearn's zero_division=0)."""
    out = np.zeros_like(numerator, dtype=float)
    return np.divide(numerator, denominator, out=out, where=denominator != 0)


def _weighted_metrics(y_true, prob, threshold, weights) -> dict:
    """Every metric in METRICS for each row of `weights` (case counts of one resample).

    A bootstrap resample only changes how often each case counts, so all
    resamples share one sort of the probabilities and are computed at once with
    matrix products and cumulative sums (the same construction as sklearn's
    roc_curve / precision_recall_curve with sample_weight). AUCs are NaN for a
    resample with a single class.
    """
    positive = y_true == 1
    predicted = prob >= threshold
    tp = weights @ (positive & predicted)
    fp = weights @ (~positive & predicted)
    fn = weights @ (positive & ~predicted)
    tn = weights @ (~positive & ~predicted)

    # Cumulative counts at each distinct probability, from the highest down:
    # one point of the ROC / PR curve per possible threshold.
    order = np.argsort(-prob, kind="stable")
    sorted_prob = prob[order]
    last_of_each_value = np.r_[np.flatnonzero(np.diff(sorted_prob)), prob.size - 1]
    sorted_weights = weights[:, order]
    tps = np.cumsum(sorted_weights * positive[order], axis=1)[:, last_of_each_value]
    fps = np.cumsum(sorted_weights * ~positive[order], axis=1)[:, last_of_each_value]
    n_pos, n_neg = tps[:, -1:], fps[:, -1:]
    single_class = (n_pos[:, 0] == 0) | (n_neg[:, 0] == 0)

    tpr = _divide(tps, n_pos)
    fpr = _divide(fps, n_neg)
    zeros = np.zeros((len(weights), 1))
    roc_auc = np.trapezoid(np.hstack([zeros, tpr]), np.hstack([zeros, fpr]), axis=1)
    # Average precision: precision at each threshold times the recall it adds.
    recall_gain = np.diff(np.hstack([zeros, tpr]), axis=1)
    pr_auc = np.sum(recall_gain * _divide(tps, tps + fps), axis=1)

    return {
        "accuracy": _divide(tp + tn, tp + tn + fp + fn),
        "precision": _divide(tp, tp + fp),
        "recall": _divide(tp, tp + fn),
        "specificity": _divide(tn, tn + fp),
        "f1": _divide(2 * tp, 2 * tp + fp + fn),
        "roc_auc": np.where(single_class, np.nan, roc_auc),
        "pr_auc": np.where(single_class, np.nan, pr_auc),
    }


def bootstrap_ci(y_true, prob, threshold: float = 0.5, n_boot: int | None = None,
                 seed: int = 0, level: float = 0.95, groups=None) -> dict:
    """Percentile bootstrap confidence intervals over cases: {metric: [low, high]}.

    With `groups` (a patient id per case) whole patients are resampled: the
    slices of one patient are not independent, and resampling them one by
    one would give intervals that are too narrow. `n_boot` resamples (N_BOOT
    when None); those with a single class are skipped for the AUCs; [None,
    None] when no resample could be used.
    """
    y_true, prob = as_arrays(y_true, prob)
    rng = np.random.default_rng(seed)
    if groups is None:
        groups = np.arange(y_true.size)
    codes, uniques = pd.factorize(np.asarray(groups))
    # How often each group appears in a resample drawn with replacement;
    # each case counts as often as its group.
    drawn = rng.multinomial(len(uniques), np.full(len(uniques), 1 / len(uniques)), size=n_boot or N_BOOT)
    weights = drawn[:, codes]
    resampled = _weighted_metrics(y_true, prob, threshold, weights)

    tail = (1 - level) / 2 * 100
    intervals = {}
    for name in METRICS:
        values = resampled[name][~np.isnan(resampled[name])]
        if values.size == 0:
            intervals[name] = [None, None]
        else:
            low, high = np.percentile(values, [tail, 100 - tail])
            intervals[name] = [float(low), float(high)]
    return intervals


def _best_threshold(scores, thresholds) -> float:
    """The threshold with the highest score; among ties, the one closest to 0.5."""
    best = np.flatnonzero(np.isclose(scores, np.max(scores)))
    closest = best[np.argmin(np.abs(thresholds[best] - 0.5))]
    return float(thresholds[closest])


def _youden_scores(y_val, p_val):
    """Sensitivity + specificity - 1 at each threshold of the ROC curve."""
    fpr, tpr, thresholds = roc_curve(y_val, p_val, drop_intermediate=False)
    keep = np.isfinite(thresholds)  # the first point (inf) predicts nothing positive
    return (tpr - fpr)[keep], thresholds[keep]


def _f1_scores(y_val, p_val):
    """F1 at each threshold of the precision-recall curve."""
    precision, recall, thresholds = precision_recall_curve(y_val, p_val)
    # The last (precision=1, recall=0) point has no threshold.
    return _divide(2 * precision[:-1] * recall[:-1], precision[:-1] + recall[:-1]), thresholds


# How an operating threshold can be chosen on validation; the first is the default.
THRESHOLD_RULES = {"youden": _youden_scores, "f1": _f1_scores}
THRESHOLD_RULE = next(iter(THRESHOLD_RULES))


def choose_threshold(y_val, p_val, method: str = THRESHOLD_RULE) -> float:
    """Operating threshold chosen on validation data.

    "youden": max sensitivity + specificity - 1 over the ROC curve;
    "f1": max F1 over the precision-recall curve. Ties go to the threshold
    closest to 0.5. With a single class in y_val there is nothing to choose
    from and 0.5 is returned.
    """
    if method not in THRESHOLD_RULES:
        raise ValueError(f"Unknown threshold method {method!r}: use {' or '.join(map(repr, THRESHOLD_RULES))}")
    y_val, p_val = as_arrays(y_val, p_val)
    if not has_both_classes(y_val):
        return 0.5
    threshold = _best_threshold(*THRESHOLD_RULES[method](y_val, p_val))
    # Probabilities can saturate at exactly 0 or 1; keep the threshold strictly inside.
    return float(np.clip(threshold, 1e-6, 1 - 1e-6))


def evaluate_predictions(predictions: pd.DataFrame, n_boot: int | None = None, seed: int = 0,
                         threshold_method: str = THRESHOLD_RULE) -> dict:
    """Metrics of one model's predictions, JSON-serialisable.

    `predictions` has columns path, y_true (0/1), prob (positive-class
    probability) and split ("train"/"val"/"test"). The threshold is chosen on
    the val rows only; without val rows (or with a single class there) it is
    0.5 with chosen_on "default". Splits that are absent are left out:

    {"threshold": {"value", "method", "chosen_on"},
     "val":  {"at_0.5": metrics, "at_threshold": metrics},
     "test": {"at_0.5": {**metrics, "ci"}, "at_threshold": {**metrics, "ci"}}}
    """
    val = predictions[predictions["split"] == "val"]
    test = predictions[predictions["split"] == "test"]

    if has_both_classes(val["y_true"]):
        threshold = choose_threshold(val["y_true"], val["prob"], method=threshold_method)
        chosen_on = "val"
    else:
        threshold, chosen_on = 0.5, "default"
    result = {"threshold": {"value": threshold, "method": threshold_method, "chosen_on": chosen_on}}
    operating_points = {"at_0.5": 0.5, "at_threshold": threshold}

    if len(val):
        result["val"] = {
            at: binary_metrics(val["y_true"], val["prob"], t) for at, t in operating_points.items()
        }
    if len(test):
        result["test"] = {at: metrics_at(test["y_true"], test["prob"], t, n_boot=n_boot, seed=seed)
                          for at, t in operating_points.items()}
    return result


SHORTCUT_RHO = 0.3  # |Spearman rho| from which a lean on resolution is flagged: a moderate correlation


def resolution_bias(predictions: pd.DataFrame, pixels) -> pd.DataFrame:
    """Does the model lean on a slice's resolution? Spearman correlation of
    the predicted probability with the slice's pixel count (width x height of
    the file), within each split and true class, so that a class that just
    happens to come at another resolution does not count. Near 0: no lean;
    negative: low-resolution slices look more positive. COVID-CT invites
    this shortcut: its training split's COVID slices have half the pixels of
    the others, its test split's slightly more. Columns split, y_true, n, rho."""
    from scipy.stats import spearmanr  # scikit-learn's own dependency

    frame = predictions.assign(pixels=np.asarray(pixels, dtype=float))
    rows = []
    for (split, y_true), group in frame.groupby(["split", "y_true"], sort=True):
        usable = group.dropna(subset=["pixels"])
        varies = usable.pixels.nunique() > 1 and usable.prob.nunique() > 1
        rho = float(spearmanr(usable.prob, usable.pixels)[0]) if varies else float("nan")
        rows.append({"split": split, "y_true": int(y_true), "n": len(usable), "rho": rho})
    return pd.DataFrame(rows)


def resolution_warning(bias: pd.DataFrame, names: dict[int, str]) -> str | None:
    """A warning sign in resolution_bias's rows, in words: |rho| >= SHORTCUT_RHO
    within a true class (a moderate rank correlation with the pixel count,
    whatever the class); None when no class reaches it."""
    flagged = [f"{names.get(int(row.y_true), row.y_true)} ρ = {row.rho:+.2f}" for row in bias.itertuples()
               if np.isfinite(row.rho) and abs(row.rho) >= SHORTCUT_RHO]
    if not flagged:
        return None
    return (f"Warning sign: the probability follows the scan's resolution within a class ({', '.join(flagged)}; "
            f"the rule flags |ρ| ≥ {SHORTCUT_RHO}). The model may lean on resolution rather than on the lungs.")


def metrics_at(y_true, prob, threshold: float, n_boot: int | None = None, seed: int = 0, groups=None) -> dict:
    """binary_metrics at `threshold` with their bootstrap CIs ("ci"), resampled by `groups` when given."""
    return {**binary_metrics(y_true, prob, threshold),
            "ci": bootstrap_ci(y_true, prob, threshold, n_boot=n_boot, seed=seed, groups=groups)}


