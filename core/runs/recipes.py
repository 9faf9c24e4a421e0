"""Cross-validated recipes read back from their fold runs: scored together,
paired fold by fold with another recipe on the same folds, and averaged
with another recipe as an ensemble. No TensorFlow: the app's Evaluate page
lists them as it lists runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.base import files
from core.evaluation import folds
from core.runs import catalogue, storage
from core.runs.train_config import folds_of, recipe_changes


def cross_validation_table(all_runs: list[dict]) -> pd.DataFrame:
    """One row per cross-validated recipe found among the runs
    (catalogue.cross_validation_groups), scored by folds.cross_validation_summary
    over the folds trained so far: the mean fold ROC-AUC is the recipe's score.
    Folds differ in difficulty far more than recipes do, so a recipe is also
    compared with the project defaults fold by fold, on the same folds
    (same data, seed and number of folds): the mean paired difference and its
    standard error."""
    scored = []  # (recipe, config, runs, summary or the error that stopped it)
    for group in catalogue.cross_validation_groups(all_runs):
        config = group[0]["config"]
        try:
            summary = folds.cross_validation_summary([storage.read_predictions(run["path"]) for run in group],
                                                        seed=config.get("seed", 0))
        except (OSError, ValueError, KeyError) as error:  # a deleted or edited predictions.csv
            summary = error
        scored.append((recipe_changes(config), config, group, summary))

    def fold_scores(group, summary):
        return dict(zip([run["config"]["cv_fold"] for run in group], summary["fold_roc_auc"]))

    defaults = {folds_of(config): fold_scores(group, summary) for recipe, config, group, summary in scored
                if recipe == "project defaults" and isinstance(summary, dict)}
    rows = []
    for recipe, config, group, summary in scored:
        row = {"recipe": recipe, "seed": config.get("seed", 0), "folds": f"{len(group)} of {config['cv_folds']}"}
        fold_runs = " ".join(run["id"] for run in group)
        if not isinstance(summary, dict):
            rows.append({**row, "problem": f"{type(summary).__name__}: {summary}", "runs": fold_runs})
            continue
        baseline = None if recipe == "project defaults" else defaults.get(folds_of(config))
        difference, standard_error = paired_difference(fold_scores(group, summary), baseline)
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


def paired_difference(scores: dict, baseline: dict | None) -> tuple[float | None, float | None]:
    """Mean and standard error of scores[fold] - baseline[fold] over the folds both scored."""
    common = [f for f in scores if baseline and baseline.get(f) is not None and scores[f] is not None]
    differences = np.array([scores[f] - baseline[f] for f in common])
    if len(differences) < 2:
        return None, None
    return float(differences.mean()), float(differences.std(ddof=1) / np.sqrt(len(differences)))


def fold_runs(run_dirs: list[Path]) -> dict[int, Path]:
    """A recipe's fold runs by the fold each validates on (its config's
    cv_fold), in fold order."""
    by_fold = {}
    for run_dir in map(Path, run_dirs):
        config = files.read_json(run_dir / "config.json", {})
        if (config.get("cv_folds") or 0) < 2:
            raise ValueError(f"{run_dir}: not a cross-validation fold run (its cv_folds is {config.get('cv_folds')})")
        if config["cv_fold"] in by_fold:
            raise ValueError(f"{run_dir}: a second run of fold {config['cv_fold'] + 1} (the first: "
                             f"{by_fold[config['cv_fold']]})")
        by_fold[config["cv_fold"]] = run_dir
    return dict(sorted(by_fold.items()))


def averaged_predictions(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """An ensemble's predictions from its models' predictions of the same
    images (one fold of two recipes, say): each image's probability is the
    mean of the models'. Probabilities, not votes: a confident model outweighs
    an unsure one, and the ensemble keeps a ROC curve."""
    key = [column for column in ("split", "path") if column in frames[0]]  # an external set has no split
    keyed = [frame.set_index(key).sort_index() for frame in frames]
    first = keyed[0]
    for other in keyed[1:]:
        only_one = first.index.symmetric_difference(other.index)
        if len(only_one):
            raise ValueError(f"{only_one[0]} is predicted by one model and not the other: their runs did not "
                             "score the same images (other folds, data or seed)")
        differing = first.index[first["y_true"] != other["y_true"]]
        if len(differing):
            raise ValueError(f"{differing[0]} has another label in one model's predictions")
    averaged = first.copy()
    averaged["prob"] = np.mean([frame["prob"].to_numpy() for frame in keyed], axis=0)
    return averaged.reset_index()[frames[0].columns]


def averaged_folds(recipes: list[dict[int, pd.DataFrame]]) -> dict[int, pd.DataFrame]:
    """The fold predictions of an ensemble of recipes cross-validated on the
    same folds: in each fold, the average of the recipes' models of that fold."""
    fold_lists = [sorted(recipe) for recipe in recipes]
    if any(other != fold_lists[0] for other in fold_lists[1:]):
        numbered = [", ".join(str(fold + 1) for fold in recipe) for recipe in fold_lists]
        raise ValueError(f"the recipes' fold runs are of other folds: {' against '.join(numbered)}")
    return {fold: averaged_predictions([recipe[fold] for recipe in recipes]) for fold in fold_lists[0]}


def check_same_folds(predictions: dict[int, pd.DataFrame], baseline: dict[int, pd.DataFrame]) -> None:
    """Refuses two recipes' fold predictions whose same fold validates on
    other images: they were not cross-validated on the same folds (data,
    number of folds or seed differ), so comparing them fold by fold means nothing."""
    for fold in sorted(set(predictions) & set(baseline)):
        own, theirs = (set(frame.path[frame.split == "val"]) for frame in (predictions[fold], baseline[fold]))
        if own != theirs:
            raise ValueError(f"fold {fold + 1} validates on other images than the other recipe's fold {fold + 1}: "
                             "not the same folds (data, number of folds or seed differ)")
