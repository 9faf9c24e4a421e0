"""Does a trained run lean on the scans' resolution instead of the lungs?

    python bench/shortcuts.py RUN [RUN ...]     # run ids or folders under artifacts/runs

First, how far file properties alone go: a logistic regression on each
scan's log pixel count and file format (JPEG or not), fitted on the training
split, scored by ROC-AUC on validation and test. On COVID-CT these properties
separate the training classes but say little or the opposite elsewhere, so a
model that learns them generalises worse.
Then, per run, core.evaluation.classification.resolution_bias: within each true class, the
Spearman correlation of the predicted probability with the pixel count
(negative: low-resolution scans look more like COVID).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from core.data import splits
from core.data import datasets
from core.evaluation import classification
from core.base import paths
from core.runs import storage  # noqa: E402


def file_properties(index: pd.DataFrame) -> pd.DataFrame:
    """log pixel count and is-JPEG (by content, not extension) of each scan,
    from one header read per file."""
    rows = []
    for path in index.path:
        with Image.open(path) as image:  # lazy: the header only
            rows.append({"log_pixels": np.log(image.width * image.height), "jpeg": float(image.format == "JPEG")})
    return pd.DataFrame(rows, index=index.index)


def main() -> None:
    run_dirs = [Path(arg) if Path(arg).is_dir() else paths.runs_dir() / arg for arg in sys.argv[1:]]
    index = datasets.index_dataset(paths.data_dir())
    properties = file_properties(index)

    print("file properties alone (logistic regression fitted on train): ROC-AUC")
    for columns in (["log_pixels"], ["jpeg"], ["log_pixels", "jpeg"]):
        train = index.split == "train"
        model = LogisticRegression().fit(properties.loc[train, columns], index.y[train])
        scores = {split: roc_auc_score(index.y[index.split == split],
                                       model.predict_proba(properties.loc[index.split == split, columns])[:, 1])
                  for split in splits.SPLITS}
        print(f"  {' + '.join(columns):<18} " + ", ".join(f"{s} {a:.3f}" for s, a in scores.items()))
    for split in splits.SPLITS:
        rows = index.split == split
        median = properties[rows].groupby(index.label[rows]).log_pixels.median()
        print(f"  median pixels, {split}: " + ", ".join(f"{c} {np.exp(v):,.0f}" for c, v in median.items()))

    pixels = dict(zip(index.relpath, np.exp(properties.log_pixels)))
    for run_dir in run_dirs:
        predictions = storage.read_predictions(run_dir)
        bias = classification.resolution_bias(predictions, predictions.path.map(pixels))
        print(f"\n{run_dir.name}: Spearman rho(probability, pixel count) within each class")
        print(bias.to_string(index=False, float_format="%+.2f"))


if __name__ == "__main__":
    main()
