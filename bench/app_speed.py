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
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from core import paths  # noqa: E402

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


def time_server_side(scans: list[Path]) -> list[float]:
    """Seconds of the Predict page's script run for one upload, warm model."""
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    app.switch_page("pages/5_Predict.py")
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
    args = parser.parse_args()

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
