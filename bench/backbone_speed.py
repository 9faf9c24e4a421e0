"""What the CT ResNet-152 costs against the ImageNet ResNet-50, on real COVID-CT slices.

    python bench/backbone_speed.py [--backbones resnet50 ct-resnet152] [--size 224] [--images 16]

Prints: the CT weights' conversion as a fresh machine does it (into a
temporary folder: time and file size), then per backbone its parameters and
the forward time of the whole classifier (core.models.resnet.predict_proba, no
test-time augmentation) per image, batched and for one image alone, median
of --repeats after a warm-up. The load average is printed with each figure:
the cores may be shared.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.models import ct_backbone
from core.data import datasets
from core.base import paths  # noqa: E402
from core.models.resnet import build_model, predict_proba  # noqa: E402
from core.data.image_cache import cache_images  # noqa: E402


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def timed(function, repeats: int) -> float:
    function()  # warm-up: traces the graph
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "ct-resnet152"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        path = Path(cache) / ct_backbone.CACHE_FILE
        started = time.perf_counter()
        ct_backbone.convert(path, report=lambda line: None)
        print(f"CT weights conversion: {time.perf_counter() - started:.1f} s, {path.stat().st_size / 2**20:.0f} MiB "
              f"(load average {load()})", flush=True)

    index = datasets.index_dataset(paths.data_dir())
    files = index[index.split == "test"].path.tolist()[:args.images]
    batch = cache_images(files, args.size).array().astype("float32")
    for backbone in args.backbones:
        model = build_model(backbone, args.size, paths.weights_path())
        parameters = sum(int(w.numpy().size) for w in model.weights) / 1e6
        batched = timed(lambda: predict_proba(model, batch, batch_size=len(batch)), args.repeats) / len(batch)
        single = timed(lambda: predict_proba(model, batch[:1]), args.repeats)
        print(f"{backbone:>24}: {parameters:.1f} M parameters; {args.size} px forward "
              f"{1000 * batched:.0f} ms/image in batches of {len(batch)}, {1000 * single:.0f} ms for one image "
              f"(load average {load()})", flush=True)


if __name__ == "__main__":
    main()
