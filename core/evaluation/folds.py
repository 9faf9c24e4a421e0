"""A recipe scored by cross-validation: its folds' validation predictions
taken together."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from core.evaluation.classification import bootstrap_ci, has_both_classes


def cross_validation_summary(predictions: list[pd.DataFrame], n_boot: int | None = None, seed: int = 0) -> dict:
    """Score a recipe from its k cross-validation runs (core.training.cross_validation.cross_validate):
    each run's validation ROC-AUC, their mean and standard deviation, and the
    ROC-AUC of all out-of-fold predictions pooled, with a bootstrap 95% CI.
    The mean over folds is the recipe's score (as scikit-learn's
    cross_val_score); the pooled figure also asks that the fold models'
    probabilities be alike, as one model's would be. Test predictions are
    left out: recipes are chosen here."""
    folds = [frame[frame["split"] == "val"] for frame in predictions]
    pooled = pd.concat(folds, ignore_index=True)
    repeated = pooled["path"][pooled["path"].duplicated()]
    if len(repeated):
        raise ValueError(f"{repeated.iloc[0]} validates in more than one fold: these runs are not one "
                         "cross-validation")
    fold_auc = [float(roc_auc_score(f["y_true"], f["prob"])) if has_both_classes(f["y_true"]) else None
                for f in folds]
    scored = [auc for auc in fold_auc if auc is not None]
    return {
        "fold_roc_auc": fold_auc,
        "mean_roc_auc": float(np.mean(scored)) if scored else None,
        "std_roc_auc": float(np.std(scored, ddof=1)) if len(scored) > 1 else None,
        "pooled_roc_auc": float(roc_auc_score(pooled["y_true"], pooled["prob"]))
        if has_both_classes(pooled["y_true"]) else None,
        "pooled_ci": bootstrap_ci(pooled["y_true"], pooled["prob"], n_boot=n_boot, seed=seed)["roc_auc"],
        "n_images": len(pooled),
    }
