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

    adapt = commands.add_parser(
        "adapt", help="fine-tune the deployed model for a site with labelled scans, and measure it there",
        description="Splits the site's patients into folds; for each, fine-tunes the deployed model on "
                    "COVID-CT's training split plus the other folds and scores the fold's patients; then "
                    "fine-tunes on all of them (the adapted run). Prints the site's figures before and after, "
                    "on patients each model never saw. Each SITE_DIR: one sub-folder per class, patients as "
                    "sub-folders.")
    adapt.add_argument("site_dirs", nargs="+", metavar="SITE_DIR")
    adapt.add_argument("--site", required=True, help="the site's name (letters, digits, '.', '_', '-')")
    adapt.add_argument("--folds", type=int, help="folds of patients (default: as many as the site allows, "
                                                 "at most core.training.site_adaptation.MAX_FOLDS)")
    adapt.add_argument("--seed", type=int, default=0)
    adapt.set_defaults(func=cmd_adapt)


def cmd_panel(args) -> int:
    from core.inference import panel  # TensorFlow: only when a model is used
    from core.runs import checks

    run_dir = checks.require_intact(run_dir_for(args.run))
    table = panel.panel_table(run_dir, panel.panel_results(run_dir, report=report, refresh=args.refresh))
    print(f"run {run_dir.name} on the external panel (CIs resample patients; a few patients per set):")
    print(table.to_string(index=False, float_format="%.3f"))
    return 0


def cmd_adapt(args) -> int:
    from core.inference import deploy
    from core.training import site_adaptation  # TensorFlow: only when a site is adapted

    if args.folds is not None and not 2 <= args.folds <= site_adaptation.MAX_FOLDS:
        raise ValueError(f"--folds {args.folds} must be between 2 and {site_adaptation.MAX_FOLDS}")
    result = site_adaptation.adapt(deploy.deployed_run_dir(), args.site_dirs, args.site, folds=args.folds,
                                   seed=args.seed, report=report)
    print(f"site {result['site']}: {result['patients']} patients, {result['slices']} slices, "
          f"{result['folds']} folds; before: {result['deployed']}, after: models that never saw the patient")
    print(site_adaptation.before_after_table(result).to_string(index=False))
    print(f"adapted run (all the site's patients): {result['adapted_run']}; "
          "no interval where the site has too few patients to estimate one")
    return 0
