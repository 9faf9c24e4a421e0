"""Peak memory of reading the worst hostile inputs, each in a fresh process
(its maximum resident set, less that of a process that only imports the
readers): the NIfTI files whose spacing once blew up on resampling, a deeply
nested run file, and the largest volumes the limits still accept.

    python bench/hostile_memory.py [--accepted]

--accepted also reads the largest accepted volumes (about 1 GB of voxels
each: give it the memory). Prints one row per case: name, file size,
outcome, peak MB above the baseline, CPU seconds.
"""
from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
READ = """
import sys, resource, time
from core.data import scans
from core.runs import catalogue
started = time.process_time()
path = sys.argv[1]
try:
    if path.endswith("runs"):
        outcome = f"listed, problems: {sum(len(r['problems']) for r in catalogue.list_runs(path))}"
    elif path != "-":
        read = scans.read_path(path)
        outcome = f"read: {len(read.slices)} slices, {sum(s.size for s in read.slices) / 1e6:.0f} M pixels"
    else:
        outcome = "baseline"
except ValueError as error:
    outcome = f"refused: {str(error)[:90]}"
print(f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}\\t{time.process_time() - started:.2f}\\t{outcome}")
"""


def nifti(path: Path, shape, zooms, dtype=np.int16, compress=True, voxels=True) -> Path:
    """A volume of air (-1000 HU) written slice by slice, so this process never holds it;
    without `voxels` only its header, announcing them."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_zooms(zooms)
    header.set_sform(np.diag([*zooms, 1.0]), code=2)
    header["vox_offset"] = 352
    with (gzip.open(path, "wb", compresslevel=1) if compress else open(path, "wb")) as out:
        out.write(header.binaryblock + bytes(4))
        plane = np.full(shape[:2], -1000, dtype).tobytes(order="F")
        for _ in range(shape[2] if voxels else 0):
            out.write(plane)
    return path


def cases(folder: Path, accepted: bool) -> dict:
    found = {
        # issue 29: a few kB that once became 819 M pixels (2 GB in predict-scan) once its pixels were made square
        "spacing 1 x 125 mm (512x512x25)": nifti(folder / "a.nii.gz", (512, 512, 25), (1, 125, 1)),
        "spacing 1 x 1e6 mm (64x64x1)": nifti(folder / "b.nii.gz", (64, 64, 1), (1, 1e6, 1)),
        "1024x1024x1000 announced, 4 bytes there": nifti(folder / "c.nii.gz", (1024, 1024, 1000), (1, 1, 1),
                                                         voxels=False),
    }
    runs = folder / "runs" / "deep"
    runs.mkdir(parents=True)
    (runs / "config.json").write_text('{"a": ' + "[" * 1_000_000 + "]" * 1_000_000 + "}")
    (runs / "status.json").write_text(json.dumps({"state": "completed"}))
    found["config.json nested 10^6 deep"] = folder / "runs"
    if accepted:  # the largest the limits accept: 512 x 512 x 1000 int16, and 1000 MB of float64 voxels
        found["accepted: 512x512x1000 int16"] = nifti(folder / "d.nii.gz", (512, 512, 1000), (0.7, 0.7, 0.7))
        found["accepted: 512x512x500 float64"] = nifti(folder / "e.nii", (512, 512, 500), (0.7, 0.7, 0.7),
                                                       np.float64, compress=False)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accepted", action="store_true", help="also the largest accepted volumes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        def measure(path) -> list[str]:
            done = subprocess.run([sys.executable, "-c", READ, str(path)], cwd=ROOT, capture_output=True, text=True,
                                  check=True)
            return done.stdout.strip().split("\t")

        baseline = float(measure("-")[0])
        print(f"baseline (the readers imported): {baseline:.0f} MB")
        print("case\tfile MB\tpeak MB above baseline\tCPU s\toutcome")
        for name, path in cases(Path(folder), args.accepted).items():
            size = sum(p.stat().st_size for p in Path(path).rglob("*")) if Path(path).is_dir() else path.stat().st_size
            peak, cpu, outcome = measure(path)
            print(f"{name}\t{size / 2**20:.2f}\t{float(peak) - baseline:.0f}\t{cpu}\t{outcome}")


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"({time.monotonic() - started:.0f} s, peak of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")
