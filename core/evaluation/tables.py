"""What the app and the CLI draw from predictions: ROC and PR curves, the
confusion matrix and its cells, and a run's metrics as a table."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_curve

from core.evaluation.classification import METRICS, as_arrays


def roc_points(y_true, prob) -> pd.DataFrame:
    """ROC curve with columns fpr, tpr, threshold (NaN for the 'nothing positive' start)."""
    fpr, tpr, thresholds = roc_curve(*as_arrays(y_true, prob))
    thresholds = np.where(np.isfinite(thresholds), thresholds, np.nan)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thresholds})


def pr_points(y_true, prob) -> pd.DataFrame:
    """Precision-recall curve with columns recall, precision, threshold
    (NaN for the final recall=0 point, which sklearn gives no threshold)."""
    precision, recall, thresholds = precision_recall_curve(*as_arrays(y_true, prob))
    thresholds = np.append(thresholds, np.nan)
    return pd.DataFrame({"recall": recall, "precision": precision, "threshold": thresholds})


def confusion_frame(y_true, prob, threshold, labels=("NonCOVID", "COVID")) -> pd.DataFrame:
    """2x2 confusion matrix: index "true <label>", columns "predicted <label>"."""
    y_true, prob = as_arrays(y_true, prob)
    matrix = confusion_matrix(y_true, (prob >= threshold).astype(int), labels=[0, 1])
    return pd.DataFrame(
        matrix,
        index=[f"true {label}" for label in labels],
        columns=[f"predicted {label}" for label in labels],
    )


def metrics_table(metrics: dict, split: str = "test", at: str = "at_threshold") -> pd.DataFrame:
    """One row per name in METRICS with columns value, ci_low, ci_high (NaN when unknown)."""
    chosen = metrics[split][at]
    ci = chosen.get("ci", {})
    rows = []
    for name in METRICS:
        low, high = ci.get(name, [None, None])
        rows.append({"value": chosen[name], "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, index=list(METRICS), dtype=float)


def cell_rows(rows: pd.DataFrame, threshold: float, cell: str) -> pd.DataFrame:
    """The predictions in one confusion-matrix cell ("fp", "fn", "tp", "tn"),
    most confident first (confidence = probability of the predicted class)."""
    predicted = rows["prob"] >= threshold
    actual = rows["y_true"] == 1
    wanted = {"fp": predicted & ~actual, "fn": ~predicted & actual,
              "tp": predicted & actual, "tn": ~predicted & ~actual}[cell]
    chosen = rows[wanted].copy()
    chosen["confidence"] = np.where(chosen["prob"] >= threshold, chosen["prob"], 1 - chosen["prob"])
    return chosen.sort_values("confidence", ascending=False, ignore_index=True)
