"""Scoring a recipe on more than one validation split: k-fold
cross-validation over train + val, leave-one-source-out, and the table that
compares cross-validated recipes fold by fold."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd

from core import data, evaluate, runs
from core.config import TrainConfig, recipe_changes
from core.train import train


def cross_validate(config: TrainConfig, name: str | None = None, report=print, runs_root=None) -> list[Path]:
    """One run per fold of config.cv_folds (at least 2), each validating on
    its own fold of train + val; returns their folders, to be scored with
    evaluate.cross_validation_summary. A failed fold stops the rest (the
    finished folds stay as runs)."""
    if config.cv_folds < 2:
        raise ValueError(f"cross-validation needs cv_folds of at least 2, got {config.cv_folds}")
    run_dirs = []
    for fold in range(config.cv_folds):
        report(f"fold {fold + 1} of {config.cv_folds}")
        run_dirs.append(train(dataclasses.replace(config, cv_fold=fold), name=f"{name or 'cv'}-fold{fold + 1}",
                              report=report, runs_root=runs_root))
    return run_dirs


def leave_one_source_out(config: TrainConfig, name: str | None = None, report=print, runs_root=None) -> list[Path]:
    """One run per source of config.data_dir (at least two), each trained on
    the other sources and evaluated on the one left out (stored as that
    run's external set); returns their folders. Tells how the recipe travels
    to a source it never saw."""
    sources = data.source_dirs(config.data_dir)
    if len(sources) < 2:
        raise ValueError(f"leave-one-source-out needs at least two dataset folders in data_dir (separated by "
                         f"{os.pathsep!r}), got {config.data_dir}")
    run_dirs = []
    for folder in sources:
        source = data.source_name(folder)
        report(f"leaving out {source}")
        held_out = dataclasses.replace(config, holdout_source=source).validate()
        run_dirs.append(train(held_out, name=f"{name or 'loso'}-without-{source}", report=report,
                              runs_root=runs_root))
    return run_dirs


def cross_validation_table(all_runs: list[dict]) -> pd.DataFrame:
    """One row per cross-validated recipe found among the runs
    (runs.cross_validation_groups), scored by evaluate.cross_validation_summary
    over the folds trained so far: the mean fold ROC-AUC is the recipe's score.
    Folds differ in difficulty far more than recipes do, so a recipe is also
    compared with the project defaults fold by fold, on the same folds
    (same data, seed and number of folds): the mean paired difference and its
    standard error."""
    scored = []  # (recipe, config, runs, summary or the error that stopped it)
    for group in runs.cross_validation_groups(all_runs):
        config = group[0]["config"]
        try:
            summary = evaluate.cross_validation_summary([runs.read_predictions(run["path"]) for run in group],
                                                        seed=config.get("seed", 0))
        except (OSError, ValueError, KeyError) as error:  # a deleted or edited predictions.csv
            summary = error
        scored.append((recipe_changes(config), config, group, summary))

    def same_folds(config):
        return config.get("data_dir"), config["cv_folds"], config.get("seed", 0)

    def fold_scores(group, summary):
        return dict(zip([run["config"]["cv_fold"] for run in group], summary["fold_roc_auc"]))

    defaults = {same_folds(config): fold_scores(group, summary) for recipe, config, group, summary in scored
                if recipe == "project defaults" and isinstance(summary, dict)}
    rows = []
    for recipe, config, group, summary in scored:
        row = {"recipe": recipe, "seed": config.get("seed", 0), "folds": f"{len(group)} of {config['cv_folds']}"}
        fold_runs = " ".join(run["id"] for run in group)
        if not isinstance(summary, dict):
            rows.append({**row, "problem": f"{type(summary).__name__}: {summary}", "runs": fold_runs})
            continue
        baseline = None if recipe == "project defaults" else defaults.get(same_folds(config))
        difference, standard_error = _paired_difference(fold_scores(group, summary), baseline)
        low, high = summary["pooled_ci"]
        rows.append({
            **row,
            "mean_roc_auc": summary["mean_roc_auc"],
            "std_roc_auc": summary["std_roc_auc"],
            "vs_defaults": difference,
            "vs_defaults_se": standard_error,
            "fold_roc_auc": ", ".join("n/a" if auc is None else f"{auc:.3f}" for auc in summary["fold_roc_auc"]),
            "pooled_roc_auc": summary["pooled_roc_auc"],
            "pooled_ci_low": low,
            "pooled_ci_high": high,
            "images": summary["n_images"],
            "runs": fold_runs,
        })
    table = pd.DataFrame(rows)
    return table[[c for c in table if c != "runs"] + ["runs"]] if len(table) else table


def _paired_difference(scores: dict, baseline: dict | None) -> tuple[float | None, float | None]:
    """Mean and standard error of scores[fold] - baseline[fold] over the folds both scored."""
    common = [f for f in scores if baseline and baseline.get(f) is not None and scores[f] is not None]
    differences = np.array([scores[f] - baseline[f] for f in common])
    if len(differences) < 2:
        return None, None
    return float(differences.mean()), float(differences.std(ddof=1) / np.sqrt(len(differences)))
