"""Train the default recipe on the official COVID-CT split; print the test
metrics (threshold chosen on validation), wall-clock time and peak memory.

    python bench/train_default.py [--name bench] [TRAIN OPTIONS ...]

Takes the options of `python -m core train` (e.g. --input-size 160 --seed 1).
"""
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.evaluation import tables
from core.evaluation import classification  # noqa: E402
from core.cli.main import build_parser  # noqa: E402
from core.inference import lung_focus
from core.cli.training import config_from_args  # noqa: E402
from core.training.fit import train  # noqa: E402


def main() -> None:
    # The CLI's own train options, so the bench takes every TrainConfig setting.
    args = build_parser().parse_args(["train", *sys.argv[1:]])
    config = config_from_args(args)

    started = time.perf_counter()
    run_dir = train(config, name=args.name or "bench-default")
    seconds = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2

    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(f"\nrun {run_dir.name}")
    shown = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("data_dir", "weights")}
    print(f"config: {json.dumps(shown)}")
    print(f"threshold {metrics['threshold']['value']:.3f} chosen on {metrics['threshold']['chosen_on']}")
    print(tables.metrics_table(metrics, "test", "at_threshold").to_string(float_format="%.3f"))
    print(f"wall-clock {seconds / 60:.1f} min, peak memory {peak_gb:.2f} GB")
    test = metrics["test"]["at_threshold"]
    # One machine-readable line for bench/compare.py.
    print("RESULT " + json.dumps({"run": run_dir.name, "minutes": round(seconds / 60, 2), "peak_gb": round(peak_gb, 2),
                                  "val_roc_auc": metrics["val"]["at_threshold"]["roc_auc"],
                                  "lung_focus_ratio": lung_focus.stored_ratio(run_dir),
                                  "ci": test["ci"], **{k: test[k] for k in classification.METRICS}}))


if __name__ == "__main__":
    main()
