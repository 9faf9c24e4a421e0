"""Runs side by side on the external panel (core.inference.panel): per set
and level, ROC-AUC with its 95% CI (patients resampled), sensitivity and
specificity at each run's threshold, and the calibration error of its
calibrated probability. Every recipe comparison reports this table.

    python bench/external_panel.py --run "default" RUN [--run "lung mask" RUN ...]

RUN: a run id or folder. Each run is evaluated on a panel set only where it
has no current result (stored in the run, as `python -m core panel` does).
Lung focus: the run's stored Grad-CAM ratio on that set (`python -m core
lung-focus --run RUN` measures the panel; 1 = an even map).
Prints one Markdown table.

    python bench/external_panel.py --loso [--recipe RUN] [--name NAME]

Leave-one-source-out across COVID-CT, SY575 and the COVID-CT-MD sample
(core.training.cross_validation.leave_one_source_out): three runs of the
recipe (RUN's, default: the default recipe), each trained on two of the
sources and evaluated on the third; the table gives each run on the source
it never saw. It TRAINS three runs (about the time of three trainings).
"""
import argparse
import dataclasses
import os
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli.common import run_dir_for  # noqa: E402
from core.inference import lung_focus, panel  # noqa: E402


def cell(row) -> str:
    if pd.isna(row.roc_auc):
        return "n/a (one class)"
    interval = "" if pd.isna(row.ci_low) else f" [{row.ci_low:.2f}, {row.ci_high:.2f}]"
    return f"{row.roc_auc:.2f}{interval}"


def rows_of(label: str, run_dir, results: dict) -> list[dict]:
    """The table's rows for one run: per set and level."""
    rows = []
    for row in panel.panel_table(run_dir, results).itertuples():
        rows.append({"recipe": label, "set": row.set, "level": row.level, "n": row.n,
                     "ROC-AUC [95% CI]": cell(row), "sensitivity": f"{row.sensitivity:.2f}",
                     "specificity": f"{row.specificity:.2f}", "ECE": f"{row.ece:.3f}",
                     "lung focus": focus_cell(lung_focus.stored_ratio(run_dir, row.set))})
    return rows


def loso_rows(recipe_run: str | None, name: str) -> list[dict]:
    """Train one run per source left out (COVID-CT and the panel's sets) and score each on its own."""
    from core.base import files, paths
    from core.inference import external
    from core.runs.train_config import TrainConfig
    from core.training.cross_validation import leave_one_source_out

    recipe = (TrainConfig.from_dict(files.read_json(run_dir_for(recipe_run) / "config.json", {}))
              if recipe_run else TrainConfig())
    sources = [paths.data_dir(), *paths.panel_dirs()]
    config = dataclasses.replace(recipe, data_dir=os.pathsep.join(str(s) for s in sources), holdout_source="",
                                 cv_folds=0, cv_fold=0, start_from_run="").validate()
    rows = []
    for fold in leave_one_source_out(config, name=name, report=print):
        if fold.run_dir is None:
            rows.append({"recipe": f"without {fold.source}", "set": fold.source, "level": "not trained",
                         "n": 0, "ROC-AUC [95% CI]": fold.refused})
            continue
        held_out = {found["name"]: found["metrics"] for found in external.list_external(fold.run_dir)
                    if found["metrics"]}
        rows += rows_of(f"without {fold.source}", fold.run_dir, held_out)
    return rows


def focus_cell(ratio: float | None) -> str:
    return "not measured" if ratio is None else f"{ratio:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", nargs=2, action="append", metavar=("LABEL", "RUN"))
    parser.add_argument("--loso", action="store_true", help="leave-one-source-out over COVID-CT and the panel "
                                                            "(trains three runs)")
    parser.add_argument("--recipe", help="with --loso: the run whose recipe is trained (default: the default)")
    parser.add_argument("--name", default="loso-panel", help="with --loso: prefix of the run ids")
    args = parser.parse_args()
    if not args.run and not args.loso:
        parser.error("give --run LABEL RUN (one or more) or --loso")
    rows = loso_rows(args.recipe, args.name) if args.loso else []
    for label, run_id in args.run or []:
        run_dir = run_dir_for(run_id)
        rows += rows_of(label, run_dir, panel.panel_results(run_dir, report=lambda line: None))
    columns = list(max(rows, key=len))  # a refused LOSO fold's row has fewer cells
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row.get(column, "")) for column in columns) + " |")


if __name__ == "__main__":
    main()
