"""Cross-validated recipes side by side (issue 13: the ImageNet ResNet-50
against the CT ResNet-152), fold by fold, with each one's ensemble with the
first recipe, their fold models on the test split (for information) and on an
external set.

    python bench/backbone_cv.py --recipe "ImageNet R50" RUN... --recipe "CT R152" RUN... \\
        [--external ../shared/data/external/SY575-COVID19-CT]

RUN: the fold runs (ids or folders) of one `python -m core cv`. The first
recipe is the baseline: every other recipe, and its ensemble with the
baseline (each image's probability averaged over the two models of its
fold), is compared with it fold by fold (mean difference ± standard error).
With --external, each fold model is evaluated on that folder once (stored in
its run, as `python -m core evaluate --data` does) and scored per slice.
Prints one Markdown table.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.data import datasets
from core.evaluation import folds
from core.inference import external, lung_focus
from core.runs import storage  # noqa: E402
from core.cli.common import run_dir_for  # noqa: E402
from core.runs.recipes import averaged_folds, check_same_folds, fold_runs, paired_difference  # noqa: E402


def fold_scores(predictions: dict[int, pd.DataFrame], split: str) -> dict[int, float]:
    """Each fold model's ROC-AUC on one split of its predictions."""
    return {fold: float(roc_auc_score(frame.y_true[frame.split == split], frame.prob[frame.split == split]))
            for fold, frame in predictions.items()}


def external_predictions(by_fold: dict[int, Path], folder: Path) -> dict[int, pd.DataFrame]:
    """Each fold model's predictions on an external folder, evaluated once and kept in its run."""
    name = datasets.source_name(folder)
    for run_dir in by_fold.values():
        if not (external.results_dir(run_dir, name) / "metrics.json").exists():
            external.evaluate_on(run_dir, folder, name=name, report=lambda line: None)
    return {fold: external.read_predictions(run_dir, name).assign(split="external")
            for fold, run_dir in by_fold.items()}


def spread(values, standard_error: bool = False) -> str:
    """Mean ± standard deviation (or standard error) of the folds' figures."""
    values = list(values)
    if len(values) < 2:
        return f"{values[0]:.3f}"
    deviation = np.std(values, ddof=1) / (np.sqrt(len(values)) if standard_error else 1)
    return f"{np.mean(values):.3f} ± {deviation:.3f}"


def focus(by_fold: dict[int, Path] | None) -> str:
    """Mean ± std over the fold runs of their stored lung-focus ratio (test split, Grad-CAM)."""
    ratios = [lung_focus.stored_ratio(run_dir) for run_dir in (by_fold or {}).values()]
    ratios = [ratio for ratio in ratios if ratio is not None]
    return spread(ratios) if ratios else "not measured"


def row(name: str, predictions: dict, baseline: dict | None, outside: dict | None,
        by_fold: dict[int, Path] | None = None) -> dict:
    summary = folds.cross_validation_summary(list(predictions.values()))
    val = dict(zip(predictions, summary["fold_roc_auc"]))
    found = {
        "recipe": name,
        "fold val ROC-AUC": ", ".join(f"{auc:.3f}" for auc in val.values()),
        "mean ± SE": spread(val.values(), standard_error=True),
        "vs baseline (paired ± SE)": "",
        "pooled out-of-fold [95% CI]": f"{summary['pooled_roc_auc']:.3f} [{summary['pooled_ci'][0]:.3f}, "
                                       f"{summary['pooled_ci'][1]:.3f}]",
        "fold models on test (mean ± std)": spread(fold_scores(predictions, "test").values()),
        # An averaged pair has no Grad-CAM of its own stored per fold (by_fold None): not measured.
        "lung focus, test (mean ± std)": focus(by_fold),
    }
    if baseline is not None:
        check_same_folds(predictions, baseline)
        difference, standard_error = paired_difference(val, fold_scores(baseline, "val"))
        found["vs baseline (paired ± SE)"] = ("n/a" if difference is None  # fewer than 2 folds
                                              else f"{difference:+.3f} ± {standard_error:.3f}")
    if outside is not None:
        found["external, slices (mean ± std)"] = spread(fold_scores(outside, "external").values())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", nargs="+", action="append", required=True, metavar=("NAME", "RUN"),
                        help="a recipe's name, then its fold runs; the first recipe is the baseline")
    parser.add_argument("--external", type=Path, help="a labelled folder to score every fold model on")
    args = parser.parse_args()

    recipes = {}
    for name, *run_ids in args.recipe:
        by_fold = fold_runs([run_dir_for(run_id) for run_id in run_ids])
        recipes[name] = (by_fold, {fold: storage.read_predictions(d) for fold, d in by_fold.items()})
    outside = ({name: external_predictions(by_fold, args.external) for name, (by_fold, _) in recipes.items()}
               if args.external else {})

    (first, (_, baseline)), *others = recipes.items()
    rows = [row(first, baseline, None, outside.get(first), recipes[first][0])]
    for name, (by_fold, predictions) in others:
        rows.append(row(name, predictions, baseline, outside.get(name), by_fold))
        ensemble = averaged_folds([baseline, predictions])
        ensemble_outside = averaged_folds([outside[first], outside[name]]) if outside else None
        rows.append(row(f"{first} + {name} (averaged)", ensemble, baseline, ensemble_outside))
    columns = list(rows[0])  # a Markdown table, for docs/ct_backbone.md
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for found in rows:
        print("| " + " | ".join(found.get(column, "") for column in columns) + " |")


if __name__ == "__main__":
    main()
