"""Time of a PACS round trip: find -> answer -> stored back.

    python bench/pacs_roundtrip.py --run RUN [--repeat 3]

Starts an Orthanc of its own (temporary storage, a free local port, the
DICOMweb plugin), stores the shared JPEG-Lossless series COVID-CT-MD P002
(45 slices, not timed), loads RUN's model (timed apart), then times, per
repeat: the study search (QIDO), fetching and reading the series (QIDO +
WADO, the upload reader), scoring it, building the result (Grad-CAM of the
key slice, the Secondary Capture) and storing it (STOW). RUN: a run id or
folder (default: the deployed model).
"""
import argparse
import io
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
import requests
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.base.paths import SHARED
from core.cli.common import run_dir_for
from core.data import pacs

SERIES = SHARED / "data" / "external" / "COVID-CT-MD-dicom" / "COVID" / "P002"
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def start_orthanc(folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = {"Name": "covidct-bench", "StorageDirectory": str(folder), "IndexDirectory": str(folder),
              "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True}}
    (folder / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen(["Orthanc", str(folder / "orthanc.json")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if requests.get(f"{base}/system", timeout=1).ok:
                return process, base
        except requests.RequestException:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit("Orthanc did not start")


def store_series(base: str) -> str:
    """P002 with the UIDs a PACS requires (its own were blanked by anonymisation); its study UID."""
    for path in sorted(SERIES.glob("*.dcm")):
        dataset = pydicom.dcmread(path)
        dataset.StudyInstanceUID = generate_uid(entropy_srcs=["bench", "study"])
        dataset.SeriesInstanceUID = generate_uid(entropy_srcs=["bench", "series"])
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid(
            entropy_srcs=["bench", path.name])
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        requests.post(f"{base}/instances", data=buffer.getvalue(), timeout=30).raise_for_status()
    return generate_uid(entropy_srcs=["bench", "study"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="run id or folder (default: the deployed model)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("Orthanc") or not PLUGIN.exists():
        raise SystemExit("needs Orthanc and its DICOMweb plugin (apt-get install orthanc orthanc-dicomweb)")
    from core.inference import pacs_result, scan_decision
    from core.inference.predict import Predictor

    run_dir = run_dir_for(args.run)
    started = time.perf_counter()
    predictor = Predictor.from_run(run_dir)
    settings = scan_decision.settings_for_run(run_dir)
    print(f"model {run_dir.name} loaded in {time.perf_counter() - started:.1f} s (not in the round trip)")
    with tempfile.TemporaryDirectory() as folder:
        process, base = start_orthanc(Path(folder))
        try:
            study, url = store_series(base), f"{base}/dicom-web"
            totals = []
            for repeat in range(args.repeat):
                times, mark = {}, [time.perf_counter()]

                def lap(stage, times=times, mark=mark):  # seconds since the last lap, under `stage`
                    now = time.perf_counter()
                    times[stage], mark[0] = now - mark[0], now

                pacs.find_studies(url, patient_id="P002")
                lap("find")
                scan, source, _ = pacs.read_scan(url, study)
                lap("fetch+read")
                result = scan_decision.score_scan(predictor, scan, settings)
                lap("score")
                dataset = pacs_result.result_for_study(predictor, result, source, run_dir.name)
                lap("result")
                pacs.store(url, [dataset], study)
                lap("store")
                totals.append(sum(times.values()))
                print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items())
                      + f"; round trip {totals[-1]:.2f} s ({len(scan.slices)} slices, {len(result.scored)} scored)")
            print(f"round trip median {statistics.median(totals):.2f} s over {len(totals)}")
        finally:
            process.terminate()
            process.wait(timeout=20)


if __name__ == "__main__":
    main()
