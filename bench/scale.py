"""Data at scale: index, audit and training memory and time for N slices.

    python bench/scale.py [--sizes 2000 10000 50000] [--steps 8] [--work DIR]

For each N, builds a synthetic dataset of N JPEG slices (512 x 512 grey, in
class/patient folders of 20 slices: augmented copies of COVID-CT's images,
each patient drawing from one class) under --work, then measures, each step
in its own process so its peak resident memory is its own:

1. index: `datasets.index_dataset` (every file's header checked), and the
   duplicate audit (`audit.audit_duplicates`): time and peak memory;
2. training, the default recipe (`TrainConfig()` on that folder): decoding
   into the image cache, the frozen-stage cache if it fits its budget (else
   end-to-end streaming), and --steps fine-tuning steps; time, images/s and
   peak memory.

With --data DIR (COVID-CT, say), step 2 only, on that folder, four times:
the caches on disk (image cache empty), in memory (as before the image
cache: decoded one by one, the frozen-stage cache in RAM), on disk again
(image cache filled), and streaming without a frozen-stage cache (budget 0).

Prints one RESULT line of JSON per N and step. The synthetic folders stay
under --work for a rerun (delete them after); the image cache goes to
--work/cache.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SLICES_PER_PATIENT = 20
SIDE = 512


def synthetic_slice(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 512 x 512 grey slice: the source scan zoomed, rotated, shifted,
    flipped, with another gamma and a little noise."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    grey = cv2.resize(grey, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    angle, scale = rng.uniform(-15, 15), rng.uniform(1.0, 1.3)
    matrix = cv2.getRotationMatrix2D((SIDE / 2, SIDE / 2), angle, scale)
    matrix[:, 2] += rng.uniform(-0.08, 0.08, 2) * SIDE
    grey = cv2.warpAffine(grey, matrix, (SIDE, SIDE), borderMode=cv2.BORDER_REFLECT)
    if rng.random() < 0.5:
        grey = grey[:, ::-1]
    gamma = rng.uniform(0.8, 1.25)
    grey = 255 * (grey / 255.0) ** gamma + rng.normal(0, 4, grey.shape)
    return np.clip(grey, 0, 255).astype(np.uint8)


def _write_patients(job) -> int:
    from core.data.images import load_image

    folder, sources, first_patient, patients, seed = job
    rng = np.random.default_rng(seed)
    decoded = {}
    for patient in range(first_patient, first_patient + patients):
        label = "COVID" if patient % 2 else "NonCOVID"
        picks = [s for s in sources if f"/{label}/" in s]
        out = Path(folder) / label / f"p{patient:05d}"
        out.mkdir(parents=True, exist_ok=True)
        for k in range(SLICES_PER_PATIENT):
            source = picks[rng.integers(len(picks))]
            if source not in decoded:
                decoded[source] = load_image(source)
            cv2.imwrite(str(out / f"slice{k:02d}.jpg"), synthetic_slice(decoded[source], rng),
                        [cv2.IMWRITE_JPEG_QUALITY, 90])
    return patients * SLICES_PER_PATIENT


def build_dataset(folder: Path, n: int) -> None:
    """N slices of N / 20 patients; skipped when the folder is complete."""
    done = folder / "complete"
    if done.exists():
        return
    from core.data import datasets
    from core.base import paths

    sources = [str(p) for p in datasets.index_dataset(paths.data_dir()).path]
    patients = n // SLICES_PER_PATIENT
    per_job = 50
    jobs = [(str(folder), sources, first, min(per_job, patients - first), first)
            for first in range(0, patients, per_job)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        written = sum(pool.map(_write_patients, jobs))
    assert written == n, (written, n)
    done.write_text(str(n))


def step_index_audit(folder: str) -> dict:
    from core.data import audit
    from core.data import datasets

    started = time.perf_counter()
    index = datasets.index_dataset(folder)
    index_seconds = time.perf_counter() - started
    started = time.perf_counter()
    pairs = audit.audit_duplicates(index)
    return {"images": len(index), "index_s": round(index_seconds, 1),
            "audit_s": round(time.perf_counter() - started, 1), "pairs": len(pairs),
            "cross_class_pairs": int(pairs["cross_class"].sum()) if len(pairs) else 0}


def step_train(folder: str, steps: int, run_dir: str, storage: str = "disk") -> dict:
    """The default recipe's decoding, caching and `steps` fine-tuning steps.
    storage "memory": as before the image cache, for comparison: the images
    decoded into memory one by one (timed, then left), and the frozen-stage
    cache read into memory before the steps."""
    import keras

    from core.runs.train_config import TrainConfig
    from core.training.frozen_cache import remove_cache
    from core.models.resnet import build_model, set_trainable
    from core.training.fit import compile_model, decode_splits, training_data
    from core.training.pipeline import augmentation
    from core.runs.dataset import run_index

    config = TrainConfig(data_dir=folder)
    lines = []
    keras.utils.set_random_seed(config.seed)
    index = run_index(config)
    started = time.perf_counter()
    images, labels = decode_splits(index, config, ("train", "val"))
    decode_seconds = time.perf_counter() - started
    if storage == "memory":
        from core.data.image_cache import cache_images

        started = time.perf_counter()
        in_memory = [cache_images(images[split].sources, config.input_size, lung_crop=config.lung_crop,
                                   lung_mask=config.lung_mask).array()
                      for split in ("train", "val")]
        decode_seconds = time.perf_counter() - started
        del in_memory

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    model = build_model(config.backbone, config.input_size, config.weights, config.dropout, train_from="head")
    set_trainable(model, config.train_from)
    started = time.perf_counter()
    fitted, train_ds, val_ds = training_data(model, config, images, labels, augmentation(config),
                                                           Path(run_dir), lines.append)
    prepare_seconds = time.perf_counter() - started
    if storage == "memory" and hasattr(train_ds, "x"):
        train_ds.x, val_ds.x = train_ds.x[:], val_ds.x[:]  # the activation files read into arrays
    compile_model(fitted, config.finetune_lr)

    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            times.append(time.perf_counter())

        def on_train_batch_end(self, batch, logs=None):
            times[-1] = time.perf_counter() - times[-1]

    fitted.fit(train_ds, epochs=1, steps_per_epoch=steps, callbacks=[Timer()],
               verbose=0)
    step_seconds = float(np.median(times[1:])) if len(times) > 1 else times[0]  # the first step traces
    remove_cache(run_dir)
    return {"storage": storage, "train_images": len(images["train"]), "decode_s": round(decode_seconds, 1),
            "decode_images_per_s": round((len(images["train"]) + len(images["val"])) / decode_seconds, 1),
            "frozen_cache": next((line for line in lines if line.startswith("frozen-stage cache")), ""),
            "prepare_s": round(prepare_seconds, 1), "step_s": round(step_seconds, 2),
            "train_images_per_s": round(config.batch_size / step_seconds, 1),
            "epoch_min_estimate": round(len(images["train"]) / config.batch_size * step_seconds / 60, 1)}


def run_step(args: list[str], env: dict) -> dict:
    """One step in a child process; its result with the child's own peak memory."""
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen([sys.executable, __file__, *args], stdout=out, env=env, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        out.seek(0)
        output = out.read()
    if status != 0:
        raise SystemExit(f"step {args} failed:\n{output}")
    result = json.loads(output.strip().splitlines()[-1])
    return {**result, "peak_gb": round(usage.ru_maxrss / 1024**2, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000, 50000])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "covidct-scale")
    parser.add_argument("--only", choices=("index", "train"), help="measure one step only")
    parser.add_argument("--data", type=Path, help="measure training on this dataset folder instead (e.g. "
                        "COVID-CT), with the image and frozen-stage caches on disk and in memory")
    parser.add_argument("--step", nargs="+", help=argparse.SUPPRESS)  # internal: run one step here
    args = parser.parse_args()

    if args.step:
        name, *rest = args.step
        result = step_index_audit(*rest) if name == "index" else step_train(rest[0], int(rest[1]), *rest[2:])
        print(json.dumps(result))
        return

    env = {**os.environ, "COVIDCT_IMAGE_CACHE": str(args.work / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    if args.data:  # an existing dataset, the image cache on disk against everything in memory
        # The second "disk" finds the image cache filled; "stream" has no frozen-stage cache (budget 0).
        for storage, budget in (("disk", None), ("memory", None), ("disk", None), ("disk", "0")):
            run_env = {**env, "COVIDCT_FROZEN_CACHE_GB": budget} if budget else env
            result = run_step(["--step", "train", str(args.data), str(args.steps), str(args.work / "run-data"),
                               storage], run_env)
            print("RESULT " + json.dumps({"data": str(args.data), "step": "train", **result}), flush=True)
        return
    for n in args.sizes:
        folder = args.work / f"n{n}"
        started = time.perf_counter()
        build_dataset(folder, n)
        print(f"N={n}: dataset ready in {time.perf_counter() - started:.0f} s", flush=True)
        if args.only in (None, "index"):
            result = run_step(["--step", "index", str(folder)], env)
            print("RESULT " + json.dumps({"n": n, "step": "index+audit", **result}), flush=True)
        if args.only in (None, "train"):
            result = run_step(["--step", "train", str(folder), str(args.steps), str(args.work / f"run{n}")], env)
            print("RESULT " + json.dumps({"n": n, "step": "train", **result}), flush=True)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
