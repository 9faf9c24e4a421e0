"""python -m core lung-focus: where a run's Grad-CAM evidence lies, on its
test split and the external panel (core.inference.lung_focus)."""
from __future__ import annotations

from core.cli.common import report, run_dir_for


def add_parser(commands) -> None:
    focus = commands.add_parser(
        "lung-focus", help="share of a run's Grad-CAM evidence inside the lung fields (test split, panel)",
        description="For each slice of the run's test split and of each external panel set, the Grad-CAM "
                    "(and Grad-CAM++) map of the decided class is compared with the slice's lung mask: the "
                    "share of its mass in the lungs, the lungs' share of the slice, their ratio and whether "
                    "the hottest pixel is in the lungs. Stored in the run as lung_focus.json.")
    focus.add_argument("--run", help="run id or folder (default: the deployed model)")
    focus.add_argument("--limit", type=int, help="at most this many slices per set (default: all)")
    focus.set_defaults(func=cmd_lung_focus)


def cmd_lung_focus(args) -> int:
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit} must be at least 1")
    from core.inference import lung_focus  # TensorFlow: only when a model is used
    from core.inference.predict import Predictor

    predictor = Predictor.from_run(run_dir_for(args.run))
    results = lung_focus.run_lung_focus(predictor, limit=args.limit, report=report)
    print(f"run {predictor.run_dir.name}: Grad-CAM evidence in the lung fields (ratio 1: no more than an even map)")
    print(lung_focus.focus_table(results).to_string(index=False, float_format="%.3f"))
    return 0
