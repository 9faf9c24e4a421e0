"""From "predict this series" to the answer, for a compressed DICOM series (docs/dicom.md).

    python bench/dicom_speed.py [--run RUN_DIR | --train-tiny] [--slices 150] [--repeats 3]

Builds a --slices JPEG-Lossless series (1.2.840.10008.1.2.4.70) from the
real COVID-CT-MD series P002 in ../shared (45 files, 6 mm apart): each new
slice 2 mm from the last carries the compressed pixel data of the nearest
real slice (no re-encoding: pydicom has no JPEG Lossless encoder), its own
UIDs and position, files in shuffled order. Then prints, median of --repeats:
- decode: pydicom's pixel_array of every file (pylibjpeg-libjpeg), alone;
- listing the folder as a study (headers only, core.data.dicom_study);
- reading the series as a scan (listing, headers, sort, decode, lung window);
- with a model: lung masks and scoring (core.inference.scan_decision) with the model
  loaded (warm, as the app's server holds it), and the whole
  `python -m core predict-scan FOLDER` command (cold: TensorFlow and the
  model load first).
The model: --run (copied and deployed in a scratch folder), --train-tiny (a
run trained here on a few COVID-CT images, 224 px like the default recipe, so
scoring costs what the default model's does), else the deployed model if
there is one, else no model (decoding and reading only).
"""
import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: no start-up chatter
from core.base import paths  # noqa: E402

SOURCE = paths.SHARED / "data" / "external" / "COVID-CT-MD-dicom" / "COVID" / "P002"
SPACING_MM = 2.0


def make_series(folder: Path, count: int) -> None:
    """`count` JPEG-Lossless slices SPACING_MM apart from the real ones, in shuffled file names."""
    real = sorted((pydicom.dcmread(path) for path in SOURCE.glob("*.dcm")),
                  key=lambda ds: float(ds.ImagePositionPatient[2]))
    low, high = float(real[0].ImagePositionPatient[2]), float(real[-1].ImagePositionPatient[2])
    series_uid = generate_uid()
    names = [f"IM{k:04d}.dcm" for k in range(count)]
    random.Random(0).shuffle(names)
    for k in range(count):
        z = low + (high - low) * k / (count - 1)
        nearest = min(real, key=lambda ds: abs(float(ds.ImagePositionPatient[2]) - z))
        ds = nearest.copy()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [*nearest.ImagePositionPatient[:2], round(low + SPACING_MM * k, 2)]
        ds.InstanceNumber = k + 1
        ds.save_as(folder / names[k])


def timed(function, repeats: int) -> tuple[float, object]:
    """(median seconds over `repeats` calls, the last result)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def decode_all(folder: Path) -> int:
    from pydicom.pixels import pixel_array

    return sum(pixel_array(pydicom.dcmread(path)).size for path in folder.iterdir())


def train_tiny(artifacts: Path) -> Path:
    """A real but tiny run: tests/conftest.py's recipe at 224 px, the default recipe's input size."""
    from core.runs.train_config import TrainConfig
    from core.training.fit import train

    config = TrainConfig(data_dir=str(paths.data_dir()), weights=paths.weights_path(), input_size=224,
                         batch_size=4, max_images_per_split=8, head_epochs=1, finetune_epochs=1)
    started = time.perf_counter()
    run_dir = train(config, name="bench-tiny", report=lambda line: None, runs_root=artifacts / "runs")
    print(f"trained a tiny 224 px run in {time.perf_counter() - started:.0f} s", flush=True)
    return run_dir


def deployed_model(args, artifacts: Path) -> Path | None:
    """The run to time with, deployed (in `artifacts` unless it is the deployed model already)."""
    from core.inference import deploy

    if args.run:
        run_dir = artifacts / "runs" / Path(args.run).name
        shutil.copytree(args.run, run_dir, ignore=shutil.ignore_patterns("checkpoints", "*.log", "external"))
    elif args.train_tiny:
        run_dir = train_tiny(artifacts)
    else:
        try:
            return deploy.deployed_run_dir()
        except (ValueError, OSError):
            return None
    os.environ["COVIDCT_ARTIFACTS"] = str(artifacts)
    deploy.deploy(run_dir.name, force=True)
    return run_dir


def time_model(run_dir: Path, folder: Path, repeats: int) -> None:
    from core.data import dicom_study
    from core.inference import scan_decision
    from core.inference.predict import Predictor

    predictor, settings = Predictor.from_run(run_dir), scan_decision.settings_for_run(run_dir)
    predictor.predict_images([np.zeros((512, 512, 3), np.uint8)], ["warm-up"])

    steps = {"read": [], "lung masks + model": []}

    def answer():
        started = time.perf_counter()
        read = dicom_study.read_scan(folder)[0]  # as predict-scan reads it
        steps["read"].append(time.perf_counter() - started)
        result = scan_decision.score_scan(predictor, read, settings)
        steps["lung masks + model"].append(time.perf_counter() - started - steps["read"][-1])
        return result

    total, result = timed(answer, repeats)
    parts = ", ".join(f"{step} {statistics.median(times):.2f} s" for step, times in steps.items())
    print(f"predict this series -> answer, model loaded: {total:.2f} s ({parts}; {len(result.scored)} of "
          f"{len(result.scan.slices)} slices scored; {result.decision}, {result.scan_probability or 0:.3f})",
          flush=True)
    command = [sys.executable, "-m", "core", "predict-scan", str(folder), "--run", str(run_dir)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ})
    print(f"python -m core predict-scan (cold: TensorFlow and the model load): "
          f"{time.perf_counter() - started:.2f} s -> {done.stdout.strip() or done.stderr.strip()[-300:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a completed run folder (copied, never written to)")
    parser.add_argument("--train-tiny", action="store_true", help="train a tiny 224 px run to time with")
    parser.add_argument("--slices", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from core.data import dicom_study

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "series"
        folder.mkdir()
        make_series(folder, args.slices)
        size = sum(path.stat().st_size for path in folder.iterdir()) / 2**20
        print(f"{args.slices} JPEG-Lossless slices of 512 x 512, {size:.0f} MB; {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        decode_s, _ = timed(lambda: decode_all(folder), args.repeats)
        print(f"decode alone (pydicom + pylibjpeg-libjpeg): {decode_s:.2f} s "
              f"({decode_s / args.slices * 1000:.0f} ms a slice)", flush=True)
        list_s, study = timed(lambda: dicom_study.open_study(folder), args.repeats)
        print(f"list the study's series (headers only): {list_s:.2f} s ({len(study.series)} series)", flush=True)
        read_s, read = timed(lambda: dicom_study.read_scan(folder)[0], args.repeats)
        print(f"read the series as a scan (list, headers, sort, decode, lung window): {read_s:.2f} s "
              f"({len(read.slices)} slices)", flush=True)
        run_dir = deployed_model(args, Path(scratch) / "artifacts")
        if run_dir is None:
            print("no model (--run, --train-tiny, or a deployed one): decoding and reading only")
            return
        time_model(run_dir, folder, args.repeats)


if __name__ == "__main__":
    main()
