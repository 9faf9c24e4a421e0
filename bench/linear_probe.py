"""Reference point: frozen ImageNet ResNet-50 features + logistic regression.

    python bench/linear_probe.py [--input-size 224]

Pooled conv5 features of the official COVID-CT split, a logistic regression
whose C is chosen on validation AUC; prints validation and test ROC-AUC. The
default training recipe must beat this.
"""
import argparse
import sys
import time
from pathlib import Path

import keras
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.data import splits
from core.data import datasets
from core.base import paths  # noqa: E402
from core.models.resnet import build_model  # noqa: E402
from core.data.image_cache import cache_images  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-size", type=int, default=224)
    args = parser.parse_args()

    started = time.perf_counter()
    index = datasets.index_dataset(paths.data_dir())
    features, labels = {}, {}
    model = build_model(input_size=args.input_size, weights=paths.weights_path(), train_from="head")
    extractor = keras.Model(model.input, model.get_layer("head_pool").output)
    for split in splits.SPLITS:
        rows = index[index.split == split]
        images = cache_images(rows.path.tolist(), args.input_size).array()
        features[split] = np.concatenate([np.asarray(extractor(images[i:i + 32])) for i in range(0, len(images), 32)])
        labels[split] = rows.y.to_numpy()

    best = None
    for c in (0.001, 0.01, 0.1, 1.0):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
        probe.fit(features["train"], labels["train"])
        val_auc = roc_auc_score(labels["val"], probe.predict_proba(features["val"])[:, 1])
        print(f"C={c:<6} val ROC-AUC {val_auc:.3f}")
        if best is None or val_auc > best[0]:
            best = (val_auc, c, probe)
    val_auc, c, probe = best
    test_auc = roc_auc_score(labels["test"], probe.predict_proba(features["test"])[:, 1])
    print(f"linear probe at {args.input_size} px: C={c} (chosen on val), val ROC-AUC {val_auc:.3f}, "
          f"test ROC-AUC {test_auc:.3f}, {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
