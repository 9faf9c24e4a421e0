"""Test-time augmentation on trained runs: validation ROC-AUC of each TTA
setting, then the test metrics of the recipe's setting (flip + rotate/zoom).

    python bench/tta.py RUN [RUN ...]     # run ids or folders under artifacts/runs

TTA changes only the predictions, so the same trained models measure each
setting. Settings are compared on validation; the test split is reported for
the chosen setting only, with the threshold chosen on validation.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from compare import mean_std  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from core import data, evaluate, paths, runs  # noqa: E402
from core.model import load_model, predict_proba, tta_view_count, tta_views  # noqa: E402

SETTINGS = {"none": (False, False), "flip": (True, False), "flip+rotate/zoom": (True, True)}
CHOSEN = "flip+rotate/zoom"
SHOWN = ("roc_auc", "f1", "accuracy")


def measure(run_dir: Path) -> tuple[dict, dict]:
    """(validation ROC-AUC per setting, test metrics at the chosen setting)."""
    config = runs.read_json(run_dir / "config.json")
    rows = pd.read_csv(run_dir / "predictions.csv")
    root = Path(config["data_dir"])
    images = data.load_images([str(root / path) for path in rows.path], config["input_size"])
    model = load_model(run_dir / "model.keras")
    # Each view predicted once; a setting averages its first views (tta_views' order).
    per_view = [predict_proba(model, view) for view in
                tta_views(images.astype("float32"), True, True, config.get("fill_mode", "reflect"))]
    val = rows.split == "val"
    val_auc, chosen = {}, None
    for name, (flip, rotate_zoom) in SETTINGS.items():
        probs = np.mean(per_view[:tta_view_count(flip, rotate_zoom)], axis=0)
        val_auc[name] = roc_auc_score(rows.y_true[val], probs[val])
        if name == CHOSEN:
            chosen = rows.assign(prob=probs)
    metrics = evaluate.evaluate_predictions(chosen, n_boot=1000, seed=config.get("seed", 0),
                                            threshold_method=config.get("threshold_method", "youden"))
    return val_auc, metrics["test"]["at_threshold"]


def main() -> None:
    run_dirs = [Path(arg) if Path(arg).is_dir() else paths.runs_dir() / arg for arg in sys.argv[1:]]
    if not run_dirs:
        sys.exit(__doc__)
    results = {}
    for run_dir in run_dirs:
        results[run_dir.name] = measure(run_dir)
        val_auc, test = results[run_dir.name]
        print(f"{run_dir.name}: validation ROC-AUC " + ", ".join(f"{k} {v:.3f}" for k, v in val_auc.items())
              + f"; test at {CHOSEN}: " + ", ".join(f"{m} {test[m]:.3f}" for m in SHOWN), flush=True)

    print(f"\n| TTA | validation ROC-AUC (mean ± std over {len(results)} runs) |\n|---|---|")
    for name in SETTINGS:
        print(f"| {name} | {mean_std([val[name] for val, _ in results.values()])} |")
    print(f"\ntest at {CHOSEN}: " + ", ".join(
        f"{m} {mean_std([test[m] for _, test in results.values()])}" for m in SHOWN))
    name, (_, test) = next(iter(results.items()))
    print(f"bootstrap 95% CI of {name}: "
          + ", ".join(f"{m} [{test['ci'][m][0]:.3f}, {test['ci'][m][1]:.3f}]" for m in SHOWN))


if __name__ == "__main__":
    main()
