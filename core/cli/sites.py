"""The commands about hospitals other than the training data's: the external
panel every recipe is judged on (panel), and, for a clinician's own site,
checking, profiling and adapting the model (docs/site-adaptation.md)."""
from __future__ import annotations

from core.cli.common import report, run_dir_for


def add_parsers(commands) -> None:
    panel = commands.add_parser(
        "panel", help="score a run on the external panel (SY575, COVID-CT-MD sample; $COVIDCT_PANEL)",
        description="Evaluates the run on each external panel set it has no current result for, and prints "
                    "slice- and patient-level ROC-AUC with 95% CIs (patients resampled), sensitivity and "
                    "specificity at the run's threshold, and the calibration error of its calibrated "
                    "probability.")
    panel.add_argument("--run", help="run id or folder (default: the deployed model)")
    panel.add_argument("--refresh", action="store_true", help="evaluate again even where a result is stored")
    panel.set_defaults(func=cmd_panel)


def cmd_panel(args) -> int:
    from core.inference import panel  # TensorFlow: only when a model is used
    from core.runs import checks

    run_dir = checks.require_intact(run_dir_for(args.run))
    table = panel.panel_table(run_dir, panel.panel_results(run_dir, report=report, refresh=args.refresh))
    print(f"run {run_dir.name} on the external panel (CIs resample patients; a few patients per set):")
    print(table.to_string(index=False, float_format="%.3f"))
    return 0
