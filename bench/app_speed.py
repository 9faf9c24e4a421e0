"""App speed in a real browser (Debian's Chromium through Playwright).

    python bench/app_speed.py [--run RUN_ID]

Starts `streamlit run streamlit_app.py` on a free port and prints:
- app start -> first rendered Home page (process start to the title drawn);
- on Predict, with a warm model, upload of one real COVID-CT scan -> its
  probability and Grad-CAM overlay drawn (median over several scans; the
  first upload, which loads TensorFlow and the model, is reported apart).
- the same upload without a browser (streamlit.testing AppTest): the
  server's whole Predict run, prediction + Grad-CAM + Grad-CAM++ included.
Uses the runs under $COVIDCT_ARTIFACTS (default ./artifacts).

    python bench/app_speed.py --series 100 [--scans 2]

times instead the upload of a synthetic 100-slice DICOM series (bench/scan_speed.py
builds it) -> the scan's probability and its most suspicious slice's Grad-CAM drawn.
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from core.base import paths  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def time_upload(page, scan: Path) -> float:
    """Seconds from choosing the file to its probability and Grad-CAM drawn."""
    page.goto(page.url)  # a fresh Predict page: no previous result on screen
    # The page has finished its first run once it asks for an upload.
    expect(page.get_by_text("Upload one or more CT slices")).to_be_visible(timeout=60_000)
    started = time.perf_counter()
    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(scan))
    expect(page.get_by_test_id("stMetric").filter(has_text="Probability of")).to_be_visible(timeout=120_000)
    probability = time.perf_counter() - started
    expect(page.get_by_text("Grad-CAM", exact=True)).to_be_visible(timeout=120_000)
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=stImage] img')]"
                           ".filter(i => i.complete && i.naturalWidth > 0).length >= 2", timeout=120_000)
    gradcam = time.perf_counter() - started
    expect(page.get_by_text("Grad-CAM++", exact=True)).to_be_visible(timeout=120_000)
    print(f"  {scan.name}: probability {probability:.2f} s, Grad-CAM {gradcam:.2f} s, "
          f"Grad-CAM++ {time.perf_counter() - started:.2f} s", flush=True)
    return gradcam


def time_series_upload(page, folder: Path) -> float:
    """Seconds from choosing a series' files to the scan's result and its slice's Grad-CAM drawn."""
    page.goto(page.url)
    expect(page.get_by_text("Upload one or more CT slices")).to_be_visible(timeout=60_000)
    files = sorted(str(path) for path in folder.iterdir())
    started = time.perf_counter()
    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(files)
    # Every file read (not a run on part of the upload), then its result and Grad-CAM drawn.
    expect(page.get_by_text(f"DICOM series: {len(files)} slices read")).to_be_visible(timeout=300_000)
    expect(page.get_by_test_id("stMetric").filter(has_text="Scan probability of")).to_be_visible(timeout=300_000)
    result = time.perf_counter() - started
    expect(page.get_by_text("Grad-CAM: evidence for")).to_be_visible(timeout=300_000)
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=stImage] img')]"
                           ".filter(i => i.complete && i.naturalWidth > 0).length >= 2", timeout=300_000)
    elapsed = time.perf_counter() - started
    print(f"  {folder.name}: scan result {result:.2f} s, with Grad-CAM {elapsed:.2f} s", flush=True)
    return elapsed


def series_folders(slices: int, count: int, root: Path) -> list[Path]:
    from scan_speed import series

    folders = []
    for seed in range(count):
        folder = root / f"series{seed}"
        folder.mkdir()
        for name, content in series(slices, seed=seed):
            (folder / name).write_bytes(content)
        folders.append(folder)
    return folders


def time_server_side(scans: list[Path]) -> list[float]:
    """Seconds of the Predict page's script run for one upload, warm model."""
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()  # registers the pages
    app.switch_page("app_pages/predict.py")
    app.run()
    timings = []
    for scan in scans:
        app.file_uploader(key="uploads").set_value([(scan.name, scan.read_bytes(), "image/png")])
        started = time.perf_counter()
        app.run()
        timings.append(time.perf_counter() - started)
    return timings[1:]  # the first run loads TensorFlow and the model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=5)
    parser.add_argument("--series", type=int, default=0, help="time series of this many slices instead")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory()
    folders = series_folders(args.series, args.scans + 1, Path(scratch.name)) if args.series else []

    port = free_port()
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless",
                               "true", "--server.port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page()
            while True:
                try:
                    page.goto(f"http://localhost:{port}/")
                    break
                except Exception:
                    time.sleep(0.2)
            expect(page.get_by_role("heading", name="COVID-19 CT Explorer")).to_be_visible(timeout=120_000)
            print(f"app start -> Home rendered: {time.perf_counter() - started:.1f} s")

            page.goto(f"http://localhost:{port}/Predict")
            if folders:
                first, *warm = [time_series_upload(page, folder) for folder in folders]
                print(f"first series upload (loads TensorFlow and the model): {first:.1f} s")
                print(f"{args.series}-slice series upload -> scan result + Grad-CAM drawn, warm model: median "
                      f"{statistics.median(warm):.2f} s (min {min(warm):.2f}, max {max(warm):.2f}, {len(warm)} series)")
                return
            scans = sorted((paths.data_dir() / "COVID").glob("*.png"))[:args.scans + 1]
            first = time_upload(page, scans[0])
            warm = [time_upload(page, scan) for scan in scans[1:]]
            print(f"first upload (loads TensorFlow and the model): {first:.1f} s")
            print(f"upload -> probability + Grad-CAM drawn, warm model: median {statistics.median(warm):.2f} s "
                  f"(min {min(warm):.2f}, max {max(warm):.2f}, {len(warm)} scans)")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
    server_side = time_server_side(scans)
    print(f"server side, no browser: whole Predict run (probability, Grad-CAM, Grad-CAM++): "
          f"median {statistics.median(server_side):.2f} s over {len(server_side)} scans")


if __name__ == "__main__":
    main()
