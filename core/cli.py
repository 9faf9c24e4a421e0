"""Command line: python -m core train | resume | evaluate | predict | explain | audit | runs.

Bad input ends with a one-line reason on stderr and exit code 2, never a
traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One --option per TrainConfig field, so the CLI can set every hyperparameter."""
    from core.train import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.type in ("bool", bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"(default {default})")
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, dest=f.name, type=kind, default=None,
                                help=f"(default {default if default is not None else 'see README'})")


def config_from_args(args):
    from core.train import TrainConfig

    chosen = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
              if getattr(args, f.name) is not None}
    return TrainConfig(**chosen).validate()


def _run_dir(run_id: str | None) -> Path:
    from core import runs
    from core.predict import latest_completed_run

    if not run_id or run_id == "latest":
        return latest_completed_run()
    folder = runs.run_path(run_id)
    if not folder.is_dir():
        raise ValueError(f"run {run_id!r} not found in {folder.parent}")
    return folder


def _report(line: str) -> None:
    print(line, flush=True)  # live in a log file too (the app tails train.log)


def cmd_train(args) -> int:
    from core import runs
    from core.train import TrainConfig, train

    if args.run_dir:  # a folder prepared by launch_training (the app), or a run to resume
        config = TrainConfig.from_dict(runs.read_json(Path(args.run_dir) / "config.json", {}))
        train(config, run_dir=Path(args.run_dir), report=_report)
    else:
        train(config_from_args(args), name=args.name, report=_report)
    return 0


def cmd_resume(args) -> int:
    from core.train import resume

    resume(_run_dir(args.run), report=_report)
    return 0


def cmd_evaluate(args) -> int:
    from core import evaluate, runs

    run_dir = _run_dir(args.run)
    metrics = evaluate.evaluate_predictions(runs.read_predictions(run_dir), n_boot=args.n_boot)
    print(f"run {run_dir.name}: threshold {metrics['threshold']['value']:.3f} "
          f"(chosen on {metrics['threshold']['chosen_on']})")
    for at in ("at_0.5", "at_threshold"):
        if "test" in metrics:
            print(f"\ntest, {at.replace('_', ' ')}:")
            print(evaluate.metrics_table(metrics, "test", at).to_string(float_format="%.3f"))
    return 0


def cmd_predict(args) -> int:
    from core.data import ImageReadError
    from core.predict import Predictor

    predictor = Predictor.from_run(_run_dir(args.run))
    failures = 0
    for path in args.images:
        try:
            result = predictor.predict_file(path)
        except (ImageReadError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            failures += 1
            continue
        print(f"{path}\t{result.probability:.4f}\t{result.label}")
    return EXIT_BAD_INPUT if failures else 0


def cmd_explain(args) -> int:
    from PIL import Image

    from core.data import load_image
    from core.predict import Predictor

    predictor = Predictor.from_run(_run_dir(args.run))
    image = load_image(args.image)
    result = predictor.predict_images([image], [Path(args.image).name])[0]
    picture = predictor.gradcam_overlay(image, method=args.method, alpha=args.alpha)
    Image.fromarray(picture).save(args.out)
    print(f"{args.image}\t{result.probability:.4f}\t{result.label}\t{args.method} overlay -> {args.out}")
    return 0


def cmd_audit(args) -> int:
    from core import data

    index = data.index_dataset(args.data, positive_class=args.positive_class)
    print(data.split_counts(index).to_string())
    pairs = data.audit_duplicates(index, max_distance=args.max_distance)
    print(f"\n{len(pairs)} duplicate pair(s) across splits or classes "
          f"({int(pairs.cross_class.sum()) if len(pairs) else 0} across classes):")
    if len(pairs):
        print(pairs.to_string(index=False))
    if args.csv:
        pairs.to_csv(args.csv, index=False)
    return 0


def cmd_runs(args) -> int:
    from core import runs

    table = runs.compare_runs(runs.list_runs())
    print(table.to_string(index=False, float_format="%.3f") if len(table) else "no runs yet")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from core import paths

    parser = argparse.ArgumentParser(prog="python -m core", description="COVID-19 CT Explorer pipeline")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a run (head warm-up, then fine-tuning), then evaluate it")
    train.add_argument("--name", help="suffix for the run id")
    train.add_argument("--run-dir", help="train into this existing run folder with its config.json")
    _add_config_options(train)
    train.set_defaults(func=cmd_train)

    resume = commands.add_parser("resume", help="continue an interrupted, failed or cancelled run")
    resume.add_argument("run", help="run id")
    resume.set_defaults(func=cmd_resume)

    evaluate = commands.add_parser("evaluate", help="test metrics with 95%% bootstrap CIs for a run")
    evaluate.add_argument("--run", default="latest", help="run id (default: newest completed)")
    evaluate.add_argument("--n-boot", type=int, default=1000)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = commands.add_parser("predict", help="probability of the positive class for scans (PNG, JPEG, DICOM)")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--run", default="latest")
    predict.set_defaults(func=cmd_predict)

    explain = commands.add_parser("explain", help="save a Grad-CAM overlay for one scan")
    explain.add_argument("image")
    explain.add_argument("--run", default="latest")
    explain.add_argument("--method", choices=("gradcam", "gradcam++"), default="gradcam")
    explain.add_argument("--alpha", type=float, default=0.4, help="heatmap opacity 0..1")
    explain.add_argument("--out", default="gradcam.png")
    explain.set_defaults(func=cmd_explain)

    audit = commands.add_parser("audit", help="split counts and duplicates across splits or classes")
    audit.add_argument("--data", default=str(paths.data_dir()))
    audit.add_argument("--positive-class", default="COVID")
    audit.add_argument("--max-distance", type=int, default=6, help="perceptual-hash Hamming distance")
    audit.add_argument("--csv", help="also write the pairs to this CSV file")
    audit.set_defaults(func=cmd_audit)

    listing = commands.add_parser("runs", help="list runs with their settings and test metrics")
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
