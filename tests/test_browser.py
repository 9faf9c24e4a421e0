"""End to end in a real browser: `streamlit run streamlit_app.py` serving the
tiny trained run, driven by Debian's Chromium through Playwright. A real
COVID-CT slice uploaded on the Predict page gets a probability and Grad-CAM
overlays; the screenshot lands in test-artifacts/ (git-ignored)."""
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SLOW = 120_000  # ms: the first prediction loads TensorFlow and the model on a busy CPU

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="no Chromium at /usr/bin/chromium (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


@pytest.fixture
def app_url(trained_artifacts, tmp_path):
    """The app on a free port, with COVIDCT_ARTIFACTS at the trained run."""
    port = free_port()
    log_path = tmp_path / "streamlit.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
             "--server.port", str(port), "--server.fileWatcherType", "none"],
            cwd=ROOT, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_predict_page_in_chromium_shows_probability_and_gradcam(app_url, data_dir):
    scan = data_dir / "COVID" / "2020.03.13.20035212-p23-155.png"
    screenshots = ROOT / "test-artifacts"
    screenshots.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(f"{app_url}/Predict")
            page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(scan))

            metric = page.get_by_test_id("stMetric").filter(has_text="Probability of COVID")
            expect(metric).to_be_visible(timeout=SLOW)
            assert re.fullmatch(r"\d{1,3}\.\d%", metric.get_by_test_id("stMetricValue").inner_text())
            for caption in ("scan", "Grad-CAM", "Grad-CAM++"):
                expect(page.get_by_text(caption, exact=True)).to_be_visible(timeout=SLOW)
            # Every image is really drawn (decoded by the browser, not a broken link).
            images = page.get_by_test_id("stImage").locator("img")
            expect(images).to_have_count(3, timeout=SLOW)
            for i in range(3):
                page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                       arg=images.nth(i).element_handle(), timeout=SLOW)
            for method in ("Grad-CAM", "Grad-CAM++"):  # the last elements of the page
                expect(page.get_by_role("button", name=f"Download {method} PNG")).to_be_visible(timeout=SLOW)
            assert page.get_by_test_id("stException").count() == 0
            page.screenshot(path=str(screenshots / "predict.png"), full_page=True)

            # The overlay PNG is encoded when asked for: the download is a PNG of the scan's size.
            with page.expect_download(timeout=SLOW) as download:
                page.get_by_role("button", name="Download Grad-CAM PNG").click()
            assert download.value.suggested_filename == f"{scan.stem}-gradcam.png"
            with Image.open(download.value.path()) as overlay:
                assert overlay.format == "PNG" and overlay.size == Image.open(scan).size
        finally:
            browser.close()
