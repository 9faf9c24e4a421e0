"""The default recipe over several seeds, side by side with a naive baseline.

    python bench/compare.py                      # seeds 0 1 2 + the naive baseline
    python bench/compare.py --seeds 0 --no-baseline

Each training runs in its own process (bench/train_default.py), so wall-clock
and peak memory are per recipe. The naive baseline is full fine-tuning of
ResNet-50 at the same input size and epochs with plain model.fit on the decoded
images: no activation cache, no test-time augmentation. The test split is only
reported; every choice was made on validation. Lung focus: the ratio of
Grad-CAM evidence in the lungs to the lungs' share of the slice, stored by
every run at its end (core.inference.lung_focus; 1 = an even map).
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# Training from conv1 freezes nothing, so no stage is cached: plain model.fit on images.
NAIVE = ["--train-from", "conv1", "--no-flip-tta"]
SHOWN = ("roc_auc", "f1", "accuracy", "recall", "specificity", "pr_auc")


def run_recipe(name: str, overrides: list[str]) -> dict:
    command = [sys.executable, str(BENCH / "train_default.py"), "--name", name, *overrides]
    print("$", " ".join(command[1:]), flush=True)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    result = json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])
    print(f"  {name}: test ROC-AUC {result['roc_auc']:.3f}, F1 {result['f1']:.3f}, "
          f"{result['minutes']:.1f} min, {result['peak_gb']:.1f} GB", flush=True)
    return result


def mean_std(values) -> str:
    values = [value for value in values if value is not None]  # a run without its lung focus
    if not values:
        return "not measured"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()

    default = [run_recipe(f"bench-default-seed{seed}", ["--seed", str(seed)]) for seed in args.seeds]
    naive = run_recipe("bench-naive-seed0", ["--seed", "0", *NAIVE]) if args.baseline else None

    print(f"\n| recipe | {' | '.join(SHOWN)} | lung focus | minutes | peak GB |")
    print(f"|---|{'---|' * (len(SHOWN) + 3)}")
    print(f"| default, seeds {' '.join(map(str, args.seeds))} (mean ± std) | "
          + " | ".join(mean_std([r[m] for r in default]) for m in SHOWN)
          + f" | {mean_std([r.get('lung_focus_ratio') for r in default])}"
          + f" | {mean_std([r['minutes'] for r in default])} | {max(r['peak_gb'] for r in default):.1f} |")
    if naive:
        print("| naive full fine-tuning, seed 0 | " + " | ".join(f"{naive[m]:.3f}" for m in SHOWN)
              + f" | {mean_std([naive.get('lung_focus_ratio')])}"
              + f" | {naive['minutes']:.1f} | {naive['peak_gb']:.1f} |")
        print(f"\nnaive / default wall-clock: {naive['minutes'] / default[0]['minutes']:.1f}x (seed 0)")
    first = default[0]
    print(f"bootstrap 95% CI of seed {args.seeds[0]}: "
          + ", ".join(f"{m} [{first['ci'][m][0]:.3f}, {first['ci'][m][1]:.3f}]" for m in SHOWN))


if __name__ == "__main__":
    main()
