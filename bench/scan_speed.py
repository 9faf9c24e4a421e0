"""Whole-scan upload speed on the server (docs/scan-level.md).

    python bench/scan_speed.py RUN_DIR [--slices 100] [--repeats 3]

Builds synthetic DICOM series of --slices 512 x 512 slices from real
COVID-CT slices (their grey levels as HU through the lung window), a fifth of
them soft tissue without lung (as the neck and abdomen slices of a chest CT),
copies the run into a temporary artifacts folder, deploys it there (calibration,
scan settings, OOD reference), and prints:
- core alone: reading (decode + sort), lung masks and scoring of one series;
- the Predict page's whole script run for the upload (streamlit AppTest, no
  browser): the first (TensorFlow and the model loading) and then warm runs,
  each with a new series (nothing cached), median of --repeats.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from dicom_factory import ct_dataset, dicom_bytes  # noqa: E402

from core.data import images
from core.base import paths  # noqa: E402

SIDE = 512


def series(count: int, seed: int) -> list[tuple[str, bytes]]:
    """`count` slices of one series, in shuffled file order, slightly different per seed."""
    rng = np.random.default_rng(seed)
    sources = sorted((paths.data_dir() / "COVID").glob("*.png"))
    uid = f"1.2.826.0.1.{seed}"
    files = []
    for k in range(count):
        if k < count // 10 or k >= count - count // 10:
            hounsfield = np.full((SIDE, SIDE), 40, np.int16)  # soft tissue, no lung
        else:
            grey = Image.fromarray(images.load_image(sources[k % len(sources)])).convert("L").resize((SIDE, SIDE))
            hounsfield = np.asarray(grey, float) / 255 * 1500 - 1350 + rng.normal(0, 5, (SIDE, SIDE))
        ds = ct_dataset(np.asarray(hounsfield).astype(np.int16))
        ds.SeriesInstanceUID, ds.InstanceNumber = uid, k + 1
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, -300 + 2.5 * k], [1, 0, 0, 0, 1, 0]
        files.append((f"IM{(k * 37) % count:04d}.dcm", dicom_bytes(ds)))
    return files


def deployed_copy(run_dir: Path, artifacts: Path) -> Path:
    from core.inference import deploy

    copy = artifacts / "runs" / run_dir.name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "*.log", "external"))
    os.environ["COVIDCT_ARTIFACTS"] = str(artifacts)
    started = time.perf_counter()
    deploy.deploy(run_dir.name, force=True)
    print(f"deployed a copy in {time.perf_counter() - started:.0f} s", flush=True)
    return copy


def time_core(run_dir: Path, files) -> None:
    from core.data import scans
    from core.inference import scan_decision
    from core.inference.predict import Predictor

    predictor, settings = Predictor.from_run(run_dir), scan_decision.settings_for_run(run_dir)
    predictor.predict_images([np.zeros((SIDE, SIDE, 3), np.uint8)], ["warm-up"])
    started = time.perf_counter()
    read = scans.read_files(files, "series")
    read_s = time.perf_counter() - started
    fractions = [scan_decision.lung_fraction(read.rgb(i)) for i in range(len(read.slices))]
    lung_s = time.perf_counter() - started - read_s
    result = scan_decision.score_scan(predictor, read, settings)
    total = time.perf_counter() - started
    print(f"core: read {read_s:.2f} s, lung masks {lung_s:.2f} s, read + score {total - lung_s:.2f} s "
          f"({len(read.slices)} slices, {len(result.scored)} scored, {sum(f > 0 for f in fractions)} with lung); "
          f"scan probability {result.scan_probability:.3f} ({settings['aggregation']}), {result.decision}",
          flush=True)


def time_app(count: int, repeats: int) -> None:
    from streamlit.testing.v1 import AppTest

    times = []
    for attempt in range(repeats + 1):
        files = series(count, seed=100 + attempt)
        at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=600).run()  # registers the pages
        at.switch_page("app_pages/predict.py")
        at.run()
        at.file_uploader(key="uploads").set_value([(name, content, "application/dicom") for name, content in files])
        started = time.perf_counter()
        at.run()
        elapsed = time.perf_counter() - started
        assert not at.exception and [m for m in at.metric if m.label.startswith("Scan probability")], at.error
        print(f"  Predict page run, {count}-slice series{' (first: loads the model)' if not attempt else ''}: "
              f"{elapsed:.2f} s", flush=True)
        if attempt:
            times.append(elapsed)
    print(f"app (AppTest, server side), warm: median {statistics.median(times):.2f} s "
          f"({min(times):.2f}-{max(times):.2f}) for {count} slices")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a completed run folder (copied, never written to)")
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--artifacts", help="deploy the copy into this new folder and keep it (for "
                                            "COVIDCT_ARTIFACTS=... python bench/app_speed.py --series N)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        artifacts = Path(args.artifacts).resolve() if args.artifacts else Path(scratch) / "artifacts"
        copy = deployed_copy(Path(args.run).resolve(), artifacts)
        time_core(copy, series(args.slices, seed=0))
        time_app(args.slices, args.repeats)


if __name__ == "__main__":
    main()
