"""The commands about hospitals other than the training data's: the external
panel every recipe is judged on (panel), and, for a clinician's own site,
checking, profiling and adapting the model (docs/site-adaptation.md)."""
from __future__ import annotations

import sys

from core.base import files
from core.cli.common import EXIT_BAD_INPUT, report, run_dir_for, shown


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
    adapt.add_argument("--unlabelled", action="store_true",
                       help="no labels, no training: re-estimate the model's BatchNorm statistics on the site's "
                            "slices (AdaBN); SITE_DIR as for site-check. Where SITE_DIR is labelled, its figures "
                            "before and after are printed (the labels are not used to adapt)")
    adapt.add_argument("--flip", action="store_true",
                       help="with --unlabelled: the statistics over each slice and its mirror (the flip "
                            "test-time augmentation's views)")
    adapt.set_defaults(func=cmd_adapt)
    add_site_parsers(commands)


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

    if args.unlabelled:
        return adapt_unlabelled(args, deploy.deployed_run_dir())
    if args.flip:
        raise ValueError("--flip goes with --unlabelled")
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


def adapt_unlabelled(args, deployed_dir) -> int:
    from core.training import site_adaptation, site_unlabelled  # TensorFlow: only when a site is adapted

    result = site_unlabelled.adapt_unlabelled(deployed_dir, args.site_dirs, args.site, flip=args.flip,
                                              report=report)
    print(f"site {result['site']}: BatchNorm statistics of {result['batchnorm_layers']} layers re-estimated on "
          f"{result['slices']} slices{' and their mirrors' if result['flip'] else ''}; model: {result['model']}")
    if "before" in result:
        print(f"{result['patients']} labelled patients, before: {result['deployed']}, after: its BatchNorm "
              "statistics re-estimated on the same unlabelled slices")
        print(site_adaptation.before_after_table(result).to_string(index=False))
    for problem in result["problems"]:
        print(f"error: {shown(problem)}", file=sys.stderr)
    return EXIT_BAD_INPUT if result["problems"] else 0


def add_site_parsers(commands) -> None:
    from core.evaluation import two_sample
    from core.inference import site_profile  # constants only: no TensorFlow

    check = commands.add_parser(
        "site-check", help="do a site's scans differ from the model's validation scans? (no labels needed)",
        description="Scores every image and DICOM file under FOLDER (one sub-folder per patient, or a "
                    "manifest.csv with path and patient columns) and tests whether, as a group, they differ "
                    "from the run's validation scans in the model's own features: a classifier two-sample "
                    "test over patients with a permutation p-value. Also gives the out-of-distribution "
                    "guard's refusal rate and the shift of the predicted probabilities.")
    check.add_argument("folder", help="the site's scans, searched recursively")
    check.add_argument("--run", help="run id, or 'latest' (default: the deployed model)")
    check.add_argument("--permutations", type=int, default=two_sample.N_PERMUTATIONS,
                       help=f"permutations behind the p-value (default {two_sample.N_PERMUTATIONS})")
    check.add_argument("--json", help="also write the whole result to this JSON file")
    check.set_defaults(func=cmd_site_check)

    profile = commands.add_parser(
        "site-profile", help="a site's own calibration and threshold, fitted on its labelled scans",
        description="fit NAME DATA...: from a site's labelled slices (one folder per class with patient "
                    "sub-folders, or a manifest.csv with path, label and patient columns), fit the site's "
                    "calibration and threshold, report its figures cross-fitted by patient, and store it "
                    "beside the run as sites/NAME. list: the run's profiles. remove NAME: delete one. "
                    f"A fit needs {site_profile.MIN_PATIENTS} patients, {site_profile.MIN_PATIENTS_PER_CLASS} "
                    "of each class. Use one with predict or predict-scan --site NAME.")
    actions = profile.add_subparsers(dest="action", required=True)
    fit = actions.add_parser("fit", help="fit and store a site profile")
    fit.add_argument("name", help="the profile's name (letters, digits, '.', '_', '-')")
    fit.add_argument("data", nargs="+", help="labelled dataset folders (or manifest CSV files) of the site")
    fit.add_argument("--class-map",
                     help='class folders named otherwise, e.g. "COVID19=COVID,non-COVID19=NonCOVID"')
    fit.add_argument("--replace", action="store_true", help="replace a profile of the same name")
    fit.add_argument("--n-boot", type=int, help="bootstrap resamples behind the CIs (default: core.evaluation.classification.N_BOOT)")
    listing = actions.add_parser("list", help="the run's site profiles")
    remove = actions.add_parser("remove", help="delete a site profile")
    remove.add_argument("name")
    for parser in (fit, listing, remove):
        parser.add_argument("--run", help="run id, or 'latest' (default: the deployed model)")
    profile.set_defaults(func=cmd_site_profile)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_site_check(args) -> int:
    from core.inference import site_features

    if args.permutations < 1:
        raise ValueError(f"--permutations {args.permutations} must be at least 1")
    slice_files, _ = site_features.site_files(args.folder)  # a wrong folder is refused before TensorFlow loads
    from core.inference import site_check
    result = site_check.check_folder(run_dir_for(args.run), args.folder, n_permutations=args.permutations,
                                     report=_progress)
    for problem in result["problems"]:
        print(f"error: {problem}", file=sys.stderr)
    print(f"run {result['run']}: {len(slice_files) - len(result['problems'])} slices of {args.folder}")
    print(result["message"])
    guard = site_check.guard_message(result)
    if guard:
        print(guard)
    print()
    print(site_check.figures_table(result).to_string(index=False))
    if args.json:
        files.write_json(args.json, result)
    return EXIT_BAD_INPUT if result["problems"] else 0


def cmd_site_profile(args) -> int:
    from core.inference import site_profile, site_store

    run_dir = run_dir_for(args.run)
    if args.action == "list":
        table = site_store.profiles_table(run_dir)
        print(table.to_string(index=False) if len(table) else f"run {run_dir.name} has no site profiles")
        return 0
    if args.action == "remove":
        site_store.remove_profile(run_dir, args.name)
        print(f"removed site profile {args.name} of run {run_dir.name}")
        return 0
    from core.inference import external
    profile = site_profile.fit_profile(run_dir, args.name, args.data,
                                       class_map=external.parse_class_map(args.class_map), replace=args.replace,
                                       n_boot=args.n_boot, report=_progress)
    print(site_profile.summary(profile))
    print()
    print(site_profile.figures_table(profile).to_string(index=False))
    print(f"\nstored as {site_store.profile_dir(run_dir, args.name)}: use it with --site {args.name}")
    return 0
