"""Human column names for the tables of runs and trials: one mapping, from
the names core's tables use (val_roc_auc, test_specificity, train_seconds…)
to what a clinician reads in the header."""
from __future__ import annotations

import pandas as pd

COLUMNS = {
    "run": "Run", "state": "State", "study": "Search", "trial": "Trial", "note": "Note", "problem": "Problem",
    "worker": "Worker", "seconds": "Minutes", "train_seconds": "Minutes",
    "val_roc_auc": "Validation ROC-AUC",
    "test_roc_auc": "Test ROC-AUC", "test_pr_auc": "Test PR-AUC", "test_accuracy": "Test accuracy",
    "test_f1": "Test F1", "test_recall": "Test sensitivity", "test_specificity": "Test specificity",
    "backbone": "Backbone", "input_size": "Image size", "batch_size": "Batch", "train_from": "Train from",
    "head_epochs": "Head epochs", "finetune_epochs": "Fine-tune epochs", "head_lr": "Head learning rate",
    "finetune_lr": "Fine-tune learning rate", "dropout": "Dropout", "seed": "Seed",
}
TIME_COLUMNS = ("seconds", "train_seconds")  # shown in minutes


def human(name: str) -> str:
    """A column's header: the mapped name, or the raw one made readable."""
    return COLUMNS.get(name, name.replace("_", " ").capitalize())


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """The table with times in minutes and human column names."""
    shown = table.copy()
    for column in TIME_COLUMNS:
        if column in shown:
            shown[column] = pd.to_numeric(shown[column], errors="coerce") / 60
    return shown.rename(columns=human)
