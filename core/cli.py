"""Command line: python -m core train | cv | loso | resume | tune | evaluate | deploy | predict | predict-scan
| explain | audit | runs | site-check | site-profile.

Bad input ends with a one-line reason on stderr and exit code 2, never a
traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def _run_dir(run_id: str | None) -> Path:
    """A run's folder: by id, "latest" (the newest completed run), or None:
    the deployed model (core.deploy)."""
    from core import deploy, runs
    from core.predict import latest_completed_run

    if not run_id:
        return deploy.deployed_run_dir()
    if run_id == "latest":
        return latest_completed_run()
    if Path(run_id).is_dir() and (Path(run_id) / "config.json").exists():  # a run folder's path
        return Path(run_id)
    folder = runs.run_path(run_id)
    if not folder.is_dir():
        raise ValueError(f"run {run_id!r} not found in {folder.parent}")
    return folder


def _report(line: str) -> None:
    print(line, flush=True)  # live in a log file too (the app tails train.log)


def cmd_evaluate(args) -> int:
    from core import evaluate, external, run_check, runs

    run_dir = run_check.require_intact(_run_dir(args.run))
    if args.data:  # external validation on another labelled dataset
        external.evaluate_on(run_dir, args.data, name=args.name, class_map=external.parse_class_map(args.class_map),
                             report=_report, n_boot=args.n_boot)
        return 0
    if args.name or args.class_map:
        raise ValueError("--name and --class-map go with --data DIR (external validation)")
    metrics = evaluate.evaluate_predictions(runs.read_predictions(run_dir), n_boot=args.n_boot)
    print(f"run {run_dir.name}: threshold {metrics['threshold']['value']:.3f} "
          f"(chosen on {metrics['threshold']['chosen_on']})")
    for at in ("at_0.5", "at_threshold"):
        if "test" in metrics:
            print(f"\ntest, {at.replace('_', ' ')}:")
            print(evaluate.metrics_table(metrics, "test", at).to_string(float_format="%.3f"))
    return 0


def cmd_deploy(args) -> int:
    from core import deploy

    # A run folder's path works as in evaluate; deploy keeps runs by id, under the artifacts folder.
    record = deploy.deploy(_run_dir(args.run).name, force=args.force, report=_report)
    forced = f" despite: {'; '.join(record['confirmed_despite'])}" if record["confirmed_despite"] else ""
    print(f"deployed {record['run']}: Predict and python -m core predict now use it{forced}")
    return 0


PROGRESS_FROM = 20  # files: fewer finish before a progress bar would tell anything


def image_files(inputs: list[str]) -> list[str]:
    """Files as given, folders as every image under them (sorted), and glob
    patterns (quoted, so the shell left them alone) as their matches."""
    import glob

    from core.images import IMAGE_EXTENSIONS

    files = []
    for given in inputs:
        if Path(given).is_dir():
            files += sorted(str(p) for p in Path(given).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif glob.has_magic(given):
            matches = sorted(glob.glob(given, recursive=True))
            if not matches:
                raise ValueError(f"{given}: no file matches this pattern")
            files += [m for m in matches if Path(m).is_file()]
        else:
            files.append(given)
    return files


def cmd_predict(args) -> int:
    import pandas as pd
    from tqdm import tqdm

    from core import runs
    from core.images import ImageReadError, load_image

    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size} must be at least 1")
    files = image_files(args.images)
    # TensorFlow only now: a mistyped path is refused at once, without its start-up lines on stderr.
    from core.predict import Predictor
    predictor = Predictor.from_run(_run_dir(args.run), site=args.site)
    if predictor.site:
        print(f"calibration and threshold: site profile {predictor.site}", file=sys.stderr)
    rows, failures = [], 0
    with tqdm(total=len(files), unit="scan", file=sys.stderr, disable=len(files) < PROGRESS_FROM) as progress:
        for start in range(0, len(files), args.batch_size):
            images, names = [], []
            for path in files[start:start + args.batch_size]:  # decode a batch, then one model call
                try:
                    images.append(load_image(path))
                    names.append(path)
                except (ImageReadError, OSError) as error:
                    progress.write(f"error: {error}", file=sys.stderr)
                    failures += 1
            for result in predictor.predict_images(images, names):
                decision = "refused" if result.refused else result.label
                rows.append({"path": result.name, "probability": round(result.probability, 4),
                             "decision": decision, "ood": result.refused,
                             "reason": "; ".join(result.ood_problems)})
                progress.write(f"{result.name}\t{result.probability:.4f}\t{decision}"
                               + (f"\t{_refusal_note(result)}" if result.refused else ""), file=sys.stdout)
            progress.update(len(files[start:start + args.batch_size]))
    if args.csv:
        runs.write_csv(args.csv, pd.DataFrame(rows, columns=["path", "probability", "decision", "ood", "reason"]))
    return EXIT_BAD_INPUT if failures else 0


def _refusal_note(result) -> str:
    from core.ood import REFUSAL

    return f"{REFUSAL}: {'; '.join(result.ood_problems)}"


def cmd_explain(args) -> int:
    from PIL import Image

    from core.images import load_image
    from core.predict import Predictor

    predictor = Predictor.from_run(_run_dir(args.run))
    image = load_image(args.image)
    result = predictor.predict_images([image], [Path(args.image).name])[0]
    # The map explains the decision: evidence for the class it chose.
    picture = predictor.gradcam_overlay(image, method=args.method, alpha=args.alpha, class_index=result.class_index)
    Image.fromarray(picture).save(args.out)
    print(f"{args.image}\t{result.probability:.4f}\t{result.label}\t{args.method} overlay "
          f"(evidence for {result.label}) -> {args.out}")
    if result.refused:
        print(f"warning: {_refusal_note(result)}", file=sys.stderr)
    return 0


def cmd_audit(args) -> int:
    from core import data
    from core.audit import audit_duplicates

    index = data.index_dataset(args.data, positive_class=args.positive_class)
    print(data.split_counts(index).to_string())
    several = index["source"].nunique() > 1
    if several:
        print("\nper source:\n" + data.source_counts(index).to_string())
    pairs = audit_duplicates(index, max_distance=args.max_distance)
    print(f"\n{len(pairs)} duplicate pair(s) across splits, classes or sources "
          f"({int(pairs.cross_class.sum()) if len(pairs) else 0} across classes"
          + (f", {int(pairs.cross_source.sum()) if len(pairs) else 0} across sources" if several else "") + "):")
    if len(pairs):
        print(pairs.to_string(index=False))
    if args.csv:
        pairs.to_csv(args.csv, index=False)
    return 0


def cmd_runs(args) -> int:
    from core import runs
    from core.cross_validation import cross_validation_table

    all_runs = runs.list_runs()
    table = runs.compare_runs(all_runs)
    print(table.drop(columns="problem").to_string(index=False, float_format="%.3f") if len(table) else "no runs yet")
    damaged = [run for run in all_runs if run["problems"]]
    if damaged:  # listed, never evaluated or used (core.run_check)
        print("\nDamaged runs:")
        for run in damaged:
            print(f"  {run['id']}: {'; '.join(run['problems'])}")
    recipes = cross_validation_table(all_runs)
    if len(recipes):  # fold runs, scored together: the mean fold ROC-AUC is the recipe's score
        print("\nCross-validated recipes (validation folds of train + val):")
        print(recipes.to_string(index=False, float_format="%.3f"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from core import cli_training, paths, scan_cli, site_cli

    parser = argparse.ArgumentParser(prog="python -m core", description="COVID-19 CT Explorer pipeline")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a run (head warm-up, then fine-tuning), then evaluate it")
    train.add_argument("--name", help="suffix for the run id")
    train.add_argument("--run-dir", help="train into this existing run folder with its config.json")
    cli_training.add_config_options(train)
    train.set_defaults(func=cli_training.cmd_train)

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
    cli_training.add_config_options(cv)
    cv.set_defaults(func=cli_training.cmd_cv)

    loso = commands.add_parser(
        "loso", help="leave-one-source-out: per source, train on the others and evaluate on it",
        description=f"--data-dir names several dataset folders (sources) joined with {os.pathsep!r}. One run "
                    "per source trains on all the others and is evaluated on the one left out, stored as that "
                    "run's external set: how the recipe travels to a source it never saw. Takes the options "
                    "of train.")
    loso.add_argument("--name", help="prefix for the run ids (default loso)")
    cli_training.add_config_options(loso)
    loso.set_defaults(func=cli_training.cmd_loso)

    resume = commands.add_parser("resume", help="continue an interrupted, failed or cancelled run")
    resume.add_argument("run", help="run id")
    resume.set_defaults(func=cli_training.cmd_resume)

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
    cli_training.add_config_options(tune)
    tune.set_defaults(func=cli_training.cmd_tune)

    evaluate = commands.add_parser(
        "evaluate", help="test metrics with 95%% bootstrap CIs for a run, or its external validation (--data)",
        description="Without --data: the run's test metrics. With --data DIR: score the run's model on another "
                    "labelled dataset (one folder per class, optional patient sub-folders) at the run's "
                    "validation-chosen threshold, per slice and per patient, and store the result in the run "
                    "under external/NAME.")
    evaluate.add_argument("--run", default="latest", help="run id or folder (default: newest completed)")
    evaluate.add_argument("--n-boot", type=int, help="bootstrap resamples (default 1000)")
    evaluate.add_argument("--data", help="external validation: a labelled dataset folder the run never saw")
    evaluate.add_argument("--name", help="name of the external result (default: the folder's name)")
    evaluate.add_argument("--class-map",
                          help='class folders named otherwise, e.g. "COVID19=COVID,non-COVID19=NonCOVID"')
    evaluate.set_defaults(func=cmd_evaluate)

    deploy = commands.add_parser(
        "deploy", help="make a run the model behind Predict and predict/explain",
        description="Refuses a run trained on a subset, not completed, or below the quality floor "
                    "(test ROC-AUC's 95%% CI lower bound above 0.5 on at least 50 test scans), naming why, "
                    "unless --force. Builds the run's calibration and out-of-distribution reference.")
    deploy.add_argument("run", help="run id (python -m core runs lists them)")
    deploy.add_argument("--force", action="store_true", help="deploy despite the reasons given")
    deploy.set_defaults(func=cmd_deploy)

    predict = commands.add_parser(
        "predict", help="calibrated probability of the positive class for scans (PNG, JPEG, DICOM)",
        description="Prints path, probability, decision (or 'refused' for a scan not like the training "
                    "scans) per scan, in batches, with a progress bar on stderr from 20 files on.")
    predict.add_argument("images", nargs="+", help="files, folders (every image inside) or quoted glob patterns")
    predict.add_argument("--run", help="run id, or 'latest' (default: the deployed model)")
    predict.add_argument("--batch-size", type=int, default=32, help="scans per model call (default 32)")
    predict.add_argument("--csv", help="also write path, probability, decision, ood, reason to this CSV file")
    predict.add_argument("--site", help="calibrate and decide with this site profile (site-profile list)")
    predict.set_defaults(func=cmd_predict)

    scan_cli.add_parser(commands)  # predict-scan: its own module, as this one is long enough
    site_cli.add_parsers(commands)  # site-check, site-profile

    explain = commands.add_parser("explain", help="save a Grad-CAM overlay for one scan")
    explain.add_argument("image")
    explain.add_argument("--run", help="run id, or 'latest' (default: the deployed model)")
    explain.add_argument("--method", choices=("gradcam", "gradcam++"), default="gradcam")
    explain.add_argument("--alpha", type=float, default=0.4, help="heatmap opacity 0..1")
    explain.add_argument("--out", default="gradcam.png")
    explain.set_defaults(func=cmd_explain)

    audit = commands.add_parser("audit", help="split counts and duplicates across splits, classes or sources")
    audit.add_argument("--data", default=str(paths.data_dir()),
                       help=f"dataset folder, or several sources joined with {os.pathsep!r}")
    audit.add_argument("--positive-class", default="COVID")
    audit.add_argument("--max-distance", type=int, default=6, help="perceptual-hash Hamming distance")
    audit.add_argument("--csv", help="also write the pairs to this CSV file")
    audit.set_defaults(func=cmd_audit)

    listing = commands.add_parser("runs", help="list runs with their settings and test metrics, and score "
                                  "each cross-validated recipe from its fold runs")
    listing.set_defaults(func=cmd_runs)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
