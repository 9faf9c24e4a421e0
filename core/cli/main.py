"""Command line: python -m core train | cv | loso | resume | tune | evaluate | deploy | predict | predict-scan
| explain | audit | runs | site-check | site-profile | cases | pacs-find.

Bad input ends with a one-line reason on stderr and exit code 2, never a
traceback.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
import sys

from core.cli.common import (EXIT_BAD_INPUT, MAX_DISTANCE, N_BOOT, OneLineParser, in_range, report, run_dir_for,
                             shown)


def cmd_evaluate(args) -> int:
    from core.evaluation import tables
    from core.evaluation import classification
    from core.inference import external
    from core.runs import checks, storage

    run_dir = checks.require_intact(run_dir_for(args.run))
    if args.data:  # external validation on another labelled dataset
        external.evaluate_on(run_dir, args.data, name=args.name, class_map=external.parse_class_map(args.class_map),
                             report=report, n_boot=args.n_boot)
        return 0
    if args.name or args.class_map:
        raise ValueError("--name and --class-map go with --data DIR (external validation)")
    metrics = classification.evaluate_predictions(storage.read_predictions(run_dir), n_boot=args.n_boot)
    print(f"run {shown(run_dir.name)}: threshold {metrics['threshold']['value']:.3f} "
          f"(chosen on {metrics['threshold']['chosen_on']})")
    for at in ("at_0.5", "at_threshold"):
        if "test" in metrics:
            print(f"\ntest, {at.replace('_', ' ')}:")
            print(tables.metrics_table(metrics, "test", at).to_string(float_format="%.3f"))
    return 0


def cmd_deploy_pair(args) -> int:
    from core.inference import deploy

    record = deploy.deploy_pair(run_dir_for(args.first).name, run_dir_for(args.second).name, force=args.force,
                                report=report)
    print(f"deployed the pair {record['run']}: Predict and python -m core predict now use it")
    return 0


def cmd_deploy(args) -> int:
    from core.inference import deploy

    # A run folder's path works as in evaluate; deploy keeps runs by id, under the artifacts folder.
    record = deploy.deploy(run_dir_for(args.run).name, force=args.force, report=report)
    forced = f" despite: {'; '.join(record['confirmed_despite'])}" if record["confirmed_despite"] else ""
    print(f"deployed {record['run']}: Predict and python -m core predict now use it{forced}")
    return 0


def cmd_audit(args) -> int:
    from core.base import files
    from core.data import datasets
    from core.data.audit import audit_duplicates

    index = datasets.index_dataset(args.data, positive_class=args.positive_class)
    print(datasets.split_counts(index).rename(columns=shown).to_string())  # class folders named anyhow: one line
    several = index["source"].nunique() > 1
    if several:
        print("\nper source:\n" + datasets.source_counts(index).rename(index=shown, columns=shown).to_string())
    pairs = audit_duplicates(index, **({} if args.max_distance is None else {"max_distance": args.max_distance}))
    print(f"\n{len(pairs)} duplicate pair(s) across splits, classes or sources "
          f"({int(pairs.cross_class.sum()) if len(pairs) else 0} across classes"
          + (f", {int(pairs.cross_source.sum()) if len(pairs) else 0} across sources" if several else "") + "):")
    if len(pairs):
        print(pairs.map(lambda cell: shown(cell) if isinstance(cell, str) else cell).to_string(index=False))
    if args.csv:
        files.write_csv(args.csv, pairs)
    return 0


def cmd_runs(args) -> int:
    from core.base import paths
    from core.runs import catalogue
    from core.runs.recipes import cross_validation_table

    given = os.environ.get("COVIDCT_ARTIFACTS", "").strip()
    if given and not Path(given).expanduser().is_dir():  # a folder named on purpose: a typo is no "no runs"
        raise ValueError(f"COVIDCT_ARTIFACTS={given}: no such folder")
    all_runs = catalogue.list_runs()
    # Run ids are folder names and a study's name comes from a file: each cell one line.
    table = catalogue.compare_runs(all_runs).map(lambda cell: shown(cell) if isinstance(cell, str) else cell)
    print(table.drop(columns="problem").to_string(index=False, float_format="%.3f") if len(table)
          else f"no runs yet in {shown(paths.runs_dir())}")
    damaged = [run for run in all_runs if run["problems"]]
    if damaged:  # listed, never evaluated or used (core.runs.checks)
        print("\nDamaged runs:")
        for run in damaged:
            print(f"  {shown(run['id'])}: {shown('; '.join(run['problems']))}")
    recipes = cross_validation_table(all_runs)
    if len(recipes):  # fold runs, scored together: the mean fold ROC-AUC is the recipe's score
        print("\nCross-validated recipes (validation folds of train + val):")
        print(recipes.to_string(index=False, float_format="%.3f"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from core.base import paths
    from core.cli import cases, evidence, pacs, scans, sites, slices, training

    parser = OneLineParser(prog="python -m core", description="COVID-19 CT Explorer pipeline")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a run (head warm-up, then fine-tuning), then evaluate it")
    train.add_argument("--name", help="suffix for the run id")
    train.add_argument("--run-dir", help="train into this existing run folder with its config.json")
    train.add_argument("--deploy-when-fit", action="store_true",
                       help="then deploy the run if it passes the quality floor (Home's first model)")
    training.add_config_options(train)
    train.set_defaults(func=training.cmd_train)

    cv = commands.add_parser(
        "cv", help="score a recipe by k-fold cross-validation over train + val (one run per fold)",
        description="Regroups the train and validation images into --cv-folds folds of whole patients "
                    "(default 5) and trains one run per fold, each validating on its fold; prints each "
                    "fold's validation ROC-AUC and that of all out-of-fold predictions pooled. Takes the "
                    "options of train. The test split is not used to score.")
    cv.add_argument("--name", help="suffix for the run ids (default cv)")
    cv.add_argument("--score", nargs="+", metavar="RUN", help="train nothing: score these finished fold runs")
    cv.add_argument("--ensemble-with", nargs="+", metavar="RUN",
                    help="score the ensemble of this recipe and another's fold runs (same folds): each image's "
                         "probability averaged over the two models of its fold")
    cv.add_argument("--against", nargs="+", metavar="RUN",
                    help="compare fold by fold with another recipe's fold runs (same folds): mean difference "
                         "of validation ROC-AUC ± standard error")
    training.add_config_options(cv)
    cv.set_defaults(func=training.cmd_cv)

    loso = commands.add_parser(
        "loso", help="leave-one-source-out: per source, train on the others and evaluate on it",
        description=f"--data-dir names several dataset folders (sources) joined with {os.pathsep!r}. One run "
                    "per source trains on all the others and is evaluated on the one left out, stored as that "
                    "run's external set: how the recipe travels to a source it never saw. Takes the options "
                    "of train.")
    loso.add_argument("--name", help="prefix for the run ids (default loso)")
    training.add_config_options(loso)
    loso.set_defaults(func=training.cmd_loso)

    resume = commands.add_parser("resume", help="continue an interrupted, failed or cancelled run")
    resume.add_argument("run", help="run id")
    resume.set_defaults(func=training.cmd_resume)

    tune = commands.add_parser(
        "tune", help="hyperparameter search (Optuna), scored on validation ROC-AUC",
        description="Search learning rates, batch size, frozen stages, input size, augmentation strength, "
                    "dropout and backbone; each trial is a run. The study is artifacts/studies/NAME.db: "
                    "re-run the same command to resume, start it again elsewhere to add a worker. "
                    "Settings given as options are fixed for every trial (and leave the search).")
    tune.add_argument("--study", help="study name (letters, digits, '.', '_', '-')")
    tune.add_argument("--trials", type=int, help="finished (completed or pruned) trials wanted in the study, "
                                                 "counting earlier sessions and other workers")
    tune.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    tune.add_argument("--space", help='changes to the search space: a JSON file or JSON, e.g. '
                                      '{"batch_size": [16, 32], "dropout": {"low": 0.1, "high": 0.5}, '
                                      '"input_size": null} (null: not searched)')
    tune.add_argument("--backbones", nargs="+", help="backbones to search (default: those the weights "
                                                     "load into: resnet50 for the ResNet-50 file, all three "
                                                     "for --weights imagenet)")
    tune.add_argument("--storage", help="database URL instead of the study's SQLite file, for workers "
                                        "on several machines (e.g. postgresql://host/db)")
    tune.add_argument("--show", action="store_true", help="print the trials and the best, run nothing")
    tune.add_argument("--promote", action="store_true", help="make the best trial's config the default")
    tune.add_argument("--reset-default", action="store_true", help="go back to the project's default config")
    training.add_config_options(tune)
    tune.set_defaults(func=training.cmd_tune)

    evaluate = commands.add_parser(
        "evaluate", help="test metrics with 95%% bootstrap CIs for a run, or its external validation (--data)",
        description="Without --data: the run's test metrics. With --data DIR: score the run's model on another "
                    "labelled dataset (one folder per class, optional patient sub-folders) at the run's "
                    "validation-chosen threshold, per slice and per patient, and store the result in the run "
                    "under external/NAME.")
    evaluate.add_argument("--run", default="latest", help="run id or folder (default: newest completed)")
    evaluate.add_argument("--n-boot", type=in_range(int, N_BOOT),
                          help=f"bootstrap resamples, {N_BOOT} (default: core.evaluation.classification.N_BOOT)")
    evaluate.add_argument("--data", help="external validation: a labelled dataset folder the run never saw")
    evaluate.add_argument("--name", help="name of the external result (default: the folder's name)")
    evaluate.add_argument("--class-map",
                          help='class folders named otherwise, e.g. "COVID19=COVID,non-COVID19=NonCOVID"')
    evaluate.set_defaults(func=cmd_evaluate)

    deploy = commands.add_parser(
        "deploy", help="make a run the model behind Predict and predict/explain",
        description="Refuses a run trained on a subset, not completed, or below the quality floor "
                    "(test ROC-AUC's 95%% CI lower bound above 0.5 on at least 50 test slices), naming why, "
                    "unless --force. Builds the run's calibration and out-of-distribution reference.")
    deploy.add_argument("run", help="run id (python -m core runs lists them)")
    deploy.add_argument("--force", action="store_true", help="deploy despite the reasons given")
    deploy.set_defaults(func=cmd_deploy)
    deploy_pair = commands.add_parser(
        "deploy-pair", help="serve the average of two runs as one model (core.inference.pair)",
        description="Makes a pair run whose probability is the mean of the two runs' raw probabilities, "
                    "calibrated and thresholded on their averaged validation scores; a slice is refused when "
                    "either run's guard refuses it, and its Grad-CAM is the mean of their maps. Then deploys it.")
    deploy_pair.add_argument("first", help="run id of one trained run")
    deploy_pair.add_argument("second", help="run id of the other (same data and split)")
    deploy_pair.add_argument("--force", action="store_true", help="deploy despite the reasons given")
    deploy_pair.set_defaults(func=cmd_deploy_pair)

    slices.add_parsers(commands)  # predict, explain
    scans.add_parser(commands)  # predict-scan
    pacs.add_parsers(commands)  # pacs-find

    audit = commands.add_parser("audit", help="split counts and duplicates across splits, classes or sources")
    audit.add_argument("--data", default=str(paths.data_dir()),
                       help=f"dataset folder, or several sources joined with {os.pathsep!r}")
    audit.add_argument("--positive-class", default="COVID")
    audit.add_argument("--max-distance", type=in_range(int, MAX_DISTANCE),
                       help=f"perceptual-hash Hamming distance, {MAX_DISTANCE} (default: core.data.audit.MAX_DISTANCE)")
    audit.add_argument("--csv", help="also write the pairs to this CSV file")
    audit.set_defaults(func=cmd_audit)

    listing = commands.add_parser("runs", help="list runs with their settings and test metrics, and score "
                                  "each cross-validated recipe from its fold runs")
    listing.set_defaults(func=cmd_runs)
    sites.add_parsers(commands)
    cases.add_parsers(commands)
    evidence.add_parser(commands)
    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0), or an option refused in one line (2)
        return stop.code
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as error:
        print(f"error: {shown(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
