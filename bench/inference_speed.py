"""Inference speed of a trained run on real COVID-CT scans.

    python bench/inference_speed.py [--run RUN_ID] [--images 64]

Prints: batch inference (core.models.resnet.predict_proba) vs a per-image
`model.predict` loop, images/s and their ratio; and, with a warm model, the
time from a decoded upload to its probability + Grad-CAM overlay (what the
Predict page does), median of 10.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.data import datasets
from core.base import paths
from core.runs import storage  # noqa: E402
from core.models.resnet import predict_proba, tta_view_count  # noqa: E402
from core.inference.predict import Predictor, latest_completed_run  # noqa: E402
from core.data.images import load_image  # noqa: E402
from core.data.image_cache import cache_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run id (default: newest completed)")
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()

    run_dir = storage.run_path(args.run) if args.run else latest_completed_run()
    predictor = Predictor.from_run(run_dir)
    index = datasets.index_dataset(paths.data_dir())
    files = index[index.split == "test"].path.tolist()[:args.images]
    batch = cache_images(files, predictor.input_size).array().astype("float32")
    print(f"run {run_dir.name}: input {predictor.input_size} px, {len(batch)} test images")

    predict_proba(predictor.model, batch[:32])  # warm up
    started = time.perf_counter()
    predict_proba(predictor.model, batch)
    batched = time.perf_counter() - started

    predictor.model.predict(batch[:1], verbose=0)
    started = time.perf_counter()
    for image in batch:
        predictor.model.predict(image[None], verbose=0)
    looped = time.perf_counter() - started
    print(f"batch inference      {len(batch) / batched:7.1f} images/s")
    print(f"per-image predict()  {len(batch) / looped:7.1f} images/s   (batch is {looped / batched:.1f}x faster)")

    scans = [load_image(path) for path in files[:10]]
    predictor.gradcam_overlay(scans[0])  # warm: builds the Grad-CAM model once
    timings = []
    for scan in scans:
        started = time.perf_counter()
        predictor.predict_images([scan], ["scan"])
        predictor.gradcam_overlay(scan)
        timings.append(time.perf_counter() - started)
    views = tta_view_count(predictor.flip_tta)
    print(f"one upload -> probability ({views} TTA views) + Grad-CAM overlay: "
          f"median {statistics.median(timings):.2f} s "
          f"(min {min(timings):.2f}, max {max(timings):.2f})")


if __name__ == "__main__":
    main()
