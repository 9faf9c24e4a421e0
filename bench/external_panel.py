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
"""
import argparse
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


def focus_cell(ratio: float | None) -> str:
    return "not measured" if ratio is None else f"{ratio:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", nargs=2, action="append", metavar=("LABEL", "RUN"), required=True)
    args = parser.parse_args()
    rows = []
    for label, run_id in args.run:
        run_dir = run_dir_for(run_id)
        table = panel.panel_table(run_dir, panel.panel_results(run_dir, report=lambda line: None))
        for row in table.itertuples():
            rows.append({"recipe": label, "set": row.set, "level": row.level, "n": row.n,
                         "ROC-AUC [95% CI]": cell(row), "sensitivity": f"{row.sensitivity:.2f}",
                         "specificity": f"{row.specificity:.2f}", "ECE": f"{row.ece:.3f}",
                         "lung focus": focus_cell(lung_focus.stored_ratio(run_dir, row.set))})
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[column]) for column in columns) + " |")


if __name__ == "__main__":
    main()
