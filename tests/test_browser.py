"""End to end in a real browser: `streamlit run streamlit_app.py` serving the
tiny trained run, driven by Debian's Chromium through Playwright. The smoke
run is refused for predictions until the user confirms on Evaluate; then a
real COVID-CT slice uploaded on the Predict page gets a calibrated
probability, Grad-CAM overlays and their colour bar, and a photo is refused;
the screenshots land in test-artifacts/ (git-ignored). A newcomer on a fresh
artifacts folder gets from Home's one step to an answer on Predict."""
import contextlib
import os
import re
import zipfile
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from core.inference import case_log
from core.base import files
from core.inference import deploy, ood
from ui import navigation

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


@contextlib.contextmanager
def serve_app(log_path: Path):
    """`streamlit run streamlit_app.py` on a free port with this process's environment; yields its URL."""
    port = free_port()
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


@pytest.fixture
def app_url(trained_artifacts, trained_run, tmp_path):
    """The app on a free port, with COVIDCT_ARTIFACTS at the trained run."""
    try:
        with serve_app(tmp_path / "streamlit.log") as url:
            yield url
    finally:
        deploy.deployed_file().unlink(missing_ok=True)  # the test deploys the tiny run: undo it


def test_deploy_then_predict_in_chromium_shows_probability_gradcam_and_refuses_a_photo(app_url, data_dir,
                                                                                      trained_run, tmp_path):
    from sklearn.datasets import load_sample_image

    scan = data_dir / "COVID" / "2020.03.13.20035212-p23-155.png"
    photo = tmp_path / "holiday.png"
    Image.fromarray(load_sample_image("china.jpg")).save(photo)
    screenshots = ROOT / "test-artifacts"
    screenshots.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            # 1280 px: the width the controls must fit in.
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(f"{app_url}/Predict")
            expect(page.get_by_text("No model is deployed yet")).to_be_visible(timeout=SLOW)

            # Evaluate refuses the smoke run until the user confirms, naming why.
            page.goto(f"{app_url}/Evaluate")
            expect(page.get_by_text("trained on a subset (8 images per split)")).to_be_visible(timeout=SLOW)
            deploy_button = page.get_by_role("button", name="Use this model for predictions")
            expect(deploy_button).to_be_disabled(timeout=SLOW)
            assert page.evaluate("document.documentElement.scrollWidth") <= 1280  # nothing wider than the page
            page.get_by_text("Deploy it anyway: I know why it is not fit").click()
            expect(deploy_button).to_be_enabled(timeout=SLOW)
            deploy_button.click()
            expect(page.get_by_text("now answers on Predict")).to_be_visible(timeout=SLOW)
            assert deploy.deployed_record()["run"] == trained_run.name
            # The tiny run's 8 validation slices give no meaningful 99th percentile: its feature
            # check is turned off, so the photo below is refused by the image checks alone.
            summary = files.read_json(trained_run / ood.SUMMARY_FILE)
            files.write_json(trained_run / ood.SUMMARY_FILE, {**summary, "threshold": float("inf")})

            page.goto(f"{app_url}/Predict")
            expect(page.get_by_text("Model answering:")).to_be_visible(timeout=SLOW)
            page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(scan))

            metric = page.get_by_test_id("stMetric").filter(has_text="Probability of COVID")
            expect(metric).to_be_visible(timeout=SLOW)
            assert re.fullmatch(r"<1%|>99%|\d{1,2}%", metric.get_by_test_id("stMetricValue").inner_text())
            for caption in ("scan", "Grad-CAM", "Grad-CAM++"):
                expect(page.get_by_text(caption, exact=True)).to_be_visible(timeout=SLOW)
            expect(page.get_by_text("Heatmap colours: blue = no evidence for")).to_be_visible(timeout=SLOW)
            # Every image is really drawn (decoded by the browser, not a broken link): the scan,
            # its two maps and the colour bar.
            images = page.get_by_test_id("stImage").locator("img")
            expect(images).to_have_count(4, timeout=SLOW)
            for i in range(4):
                page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                       arg=images.nth(i).element_handle(), timeout=SLOW)
            for method in ("Grad-CAM", "Grad-CAM++"):  # the last elements of the page
                expect(page.get_by_role("button", name=f"Download {method} PNG")).to_be_visible(timeout=SLOW)
            assert page.get_by_test_id("stException").count() == 0
            page.screenshot(path=str(screenshots / "predict.png"), full_page=True)
            # Nothing is cut off at 1280 px: no element wider than the page.
            assert page.evaluate("document.documentElement.scrollWidth") <= 1280

            # The overlay PNG is encoded when asked for: the scan's picture, with a band under it that
            # carries the answer, the colour bar and the research-use label (ui.records.labelled_png).
            with page.expect_download(timeout=SLOW) as download:
                page.get_by_role("button", name="Download Grad-CAM PNG").click()
            assert download.value.suggested_filename == f"{scan.stem}-gradcam.png"
            with Image.open(download.value.path()) as overlay, Image.open(scan) as original:
                assert overlay.format == "PNG" and overlay.width == max(original.width, 480)
                assert overlay.height > original.height

            # A photo is not like the training slices: no prediction.
            page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(photo))
            expect(page.get_by_text("Not like the training slices — no prediction: a colour image")).to_be_visible(
                timeout=SLOW)
            # The uploader adds the photo to the scan: the scan keeps its metric, the photo gets none.
            expect(page.get_by_test_id("stMetric")).to_have_count(1, timeout=SLOW)
            assert page.get_by_test_id("stException").count() == 0
            page.screenshot(path=str(screenshots / "predict-refused.png"), full_page=True)
        finally:
            browser.close()


# A recipe that trains on every image, so that it can pass the quality floor, in about a minute:
# 64 px, the new head only (two epochs). Test ROC-AUC 0.74 on COVID-CT's 203 test slices when measured.
TINY_FIRST_MODEL = '{"input_size": 64, "train_from": "head", "head_epochs": 2}'


def test_a_newcomer_gets_a_first_prediction_from_home_in_one_step(data_dir, weights, tmp_path, monkeypatch):
    """A fresh artifacts folder: Predict points to Home's step, its one button trains (a tiny recipe
    through $COVIDCT_FIRST_MODEL_RECIPE), the run deploys itself, and Predict answers an uploaded slice."""
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("COVIDCT_FIRST_MODEL_RECIPE", TINY_FIRST_MODEL)
    scan = data_dir / "COVID" / "2020.03.13.20035212-p23-155.png"
    screenshots = ROOT / "test-artifacts"
    screenshots.mkdir(exist_ok=True)
    with serve_app(tmp_path / "streamlit.log") as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            # Home first: a fresh server answers a first visit straight to /Predict with a "Page not
            # found" dialog over the page (its pages are registered by that first run).
            page.goto(url)
            expect(page.get_by_role("button", name="Train and use a first model")).to_be_visible(timeout=SLOW)
            page.goto(f"{url}/Predict")
            expect(page.get_by_text("No model is deployed yet")).to_be_visible(timeout=SLOW)
            page.get_by_role("link", name="Train and use a first model").click()

            button = page.get_by_role("button", name="Train and use a first model")
            expect(button).to_be_visible(timeout=SLOW)
            assert button.bounding_box()["y"] < 800  # in the first screen, not below the fold
            button.click()
            expect(page.get_by_text("so far; early stopping").first).to_be_visible(timeout=SLOW)
            page.screenshot(path=str(screenshots / "first-model-training.png"), full_page=True)
            expect(page.get_by_text("answers on Predict")).to_be_visible(timeout=600_000)
            run = next((tmp_path / "artifacts" / "runs").glob("*-first-model"))
            assert deploy.deployed_record()["run"] == run.name

            page.get_by_role("link", name="Go to Predict").click()
            expect(page.get_by_text("Model answering:")).to_be_visible(timeout=SLOW)
            page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(scan))
            metric = page.get_by_test_id("stMetric").filter(has_text="Probability of COVID")
            expect(metric).to_be_visible(timeout=SLOW)
            assert re.fullmatch(r"<1%|>99%|\d{1,2}%", metric.get_by_test_id("stMetricValue").inner_text())
            assert page.get_by_test_id("stException").count() == 0
        finally:
            browser.close()


def test_a_zipped_jpeg_lossless_series_gets_its_pdf_report_and_a_case_log_entry(app_url, trained_run, tmp_path):
    """The shared COVID-CT-MD series (real JPEG-Lossless DICOM) uploaded as a zip: one decision for the
    scan, logged in the case log, and its PDF report downloaded with the answer in it."""
    from pypdf import PdfReader

    series = ROOT.parent / "shared" / "data" / "external" / "COVID-CT-MD-dicom" / "COVID" / "P002"
    if not series.is_dir():
        pytest.skip(f"no DICOM series at {series}")
    upload = tmp_path / "P002.zip"
    with zipfile.ZipFile(upload, "w") as archive:
        for path in sorted(series.glob("*.dcm")):
            archive.write(path, f"P002/{path.name}")
    deploy.deploy(trained_run.name, force=True)
    earlier = {r["case"] for r in case_log.list_cases()[0]}  # the tiny run's artifacts are shared by the session
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            # The first visit to a fresh server can meet Streamlit's "Page not found" dialog (its pages not
            # yet registered), which makes the page behind it inert: a second visit finds them.
            page.goto(f"{app_url}/Predict")
            expect(page.get_by_text("Model answering:")).to_be_visible(timeout=SLOW)
            page.goto(f"{app_url}/Predict")
            expect(page.get_by_text("Model answering:")).to_be_visible(timeout=SLOW)
            expect(page.get_by_text("Page not found")).to_have_count(0)
            page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(upload))
            expect(page.get_by_text("DICOM series", exact=False).first).to_be_visible(timeout=SLOW)
            button = page.get_by_role("button", name="Download the PDF report")
            expect(button).to_be_visible(timeout=SLOW)
            # The page is done (its Grad-CAM drawn, no script running): the button takes clicks.
            expect(page.get_by_text("Grad-CAM: evidence for", exact=False)).to_be_visible(timeout=SLOW)
            expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=SLOW)
            records, problems = case_log.list_cases()
            records = [r for r in records if r["case"] not in earlier]
            assert problems == [] and len(records) == 1
            record = records[0]
            assert (record["kind"], record["file"], record["source"]) == ("scan", "P002.zip", "app")
            assert record["images"] == []  # no image kept unless asked
            with page.expect_download(timeout=SLOW) as download:
                button.click()
            assert download.value.suggested_filename == "P002-report.pdf"
            content = Path(download.value.path()).read_bytes()
            assert content.startswith(b"%PDF")
            text = " ".join(PdfReader(download.value.path()).pages[0].extract_text().split())
            assert f"Decision: {record['decision']}" in text and record["sha256"] in text
            assert "Research use only" in text
            assert f"Run: {trained_run.name}" in text and "Figures: test split" in text and "Calibration:" in text
            assert page.get_by_test_id("stException").count() == 0
            assert page.evaluate("document.documentElement.scrollWidth") <= 1280
            page.screenshot(path=str(ROOT / "test-artifacts" / "predict-scan-report.png"), full_page=True)
        finally:
            browser.close()


# The elements a clinician reads or clicks: buttons, widget labels, metric labels and
# values, option labels of radios and segmented controls, table headers.
READ_OR_CLICKED = ('button, [data-testid="stWidgetLabel"], [data-testid="stMetricLabel"], '
                   '[data-testid="stMetricValue"], [data-testid="stMetricDelta"], [role="columnheader"], '
                   '[role="radiogroup"] label, [data-testid="stMarkdownContainer"]')

# For each of them (visible, with text): cut off when it, or an element inside it, holds more
# than it shows without a scroll bar (overflow hidden or clipped, or an ellipsis), or when it
# reaches past the right edge of the window. Data frames are a canvas: their scroller is
# checked instead, a table that needs sideways scrolling hides columns at this width.
CLIPPED_JS = """selector => {
  const width = document.documentElement.clientWidth;
  const cut = el => {
    // An icon's ligature name (drawn as a glyph), or a label for screen readers only (1 px wide).
    if (el.closest('[data-testid^="stIcon"]') || el.clientWidth <= 1) return false;
    const style = getComputedStyle(el);
    const hides = ['hidden', 'clip'].includes(style.overflowX) || style.textOverflow === 'ellipsis';
    return hides && el.scrollWidth > el.clientWidth + 1;
  };
  const main = document.querySelector('[data-testid="stMain"]') || document.body;
  // Or hidden in part by a box around it that does not show what overflows it.
  const clippedBy = el => {
    const box = el.getBoundingClientRect();
    for (let around = el.parentElement; around && around !== main; around = around.parentElement) {
      if (getComputedStyle(around).overflowX === 'visible') continue;
      const edge = around.getBoundingClientRect();
      if (box.right > edge.right + 1 || box.left < edge.left - 1) return true;
    }
    return false;
  };
  const found = [];
  for (const el of main.querySelectorAll(selector)) {
    const box = el.getBoundingClientRect();
    const text = (el.innerText || el.getAttribute('aria-label') || '').trim().replace(/\\s+/g, ' ');
    if (!text || box.width === 0 || box.height === 0 || el.closest('[data-testid="stTooltipContent"]')) continue;
    if (box.right > width + 1) found.push(`past the window's edge (${Math.round(box.right)} px): ${text.slice(0, 80)}`);
    else if ([el, ...el.querySelectorAll('*')].some(cut) || clippedBy(el)) found.push(`cut off: ${text.slice(0, 80)}`);
  }
  for (const scroller of main.querySelectorAll('[data-testid="stDataFrame"] .dvn-scroller')) {
    if (scroller.scrollWidth > scroller.clientWidth + 1) {
      const frame = scroller.closest('[data-testid="stDataFrame"]');
      found.push(`table scrolls sideways (${scroller.scrollWidth} of ${scroller.clientWidth} px shown) under: `
                 + (frame.previousElementSibling?.innerText || '').slice(0, 60));
    }
  }
  return found;
}"""

MENU = [entry.title for entry in navigation.PAGES]


IDLE_JS = """() => {
  const status = document.querySelector('[data-testid="stStatusWidget"]');
  const running = status && /Stop|Running/.test(status.innerText);
  return !running && !document.querySelector('[data-testid="stSpinner"], [data-testid="stSkeleton"]')
         && document.querySelectorAll('[data-testid="stMain"] [data-testid="stElementContainer"]').length;
}"""


def settled(page, timeout=SLOW):
    """Wait until the script run is over: no 'Running'/'Stop' in the header, no spinner or
    skeleton, for 2 s in a row (a page's run can hand over to a fragment's)."""
    deadline, idle_since = time.monotonic() + timeout / 1000, None
    while time.monotonic() < deadline:
        if page.evaluate(IDLE_JS):
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= 2:
                return
        else:
            idle_since = None
        page.wait_for_timeout(250)
    pytest.fail(f"{page.url} still running after {timeout / 1000:.0f} s")


def address(app_url: str, entry) -> str:
    """A page's address: Home, the default page, is the app's root."""
    return f"{app_url}/" if entry.path == navigation.HOME else f"{app_url}/{entry.url_path}"


def menu(page) -> list[str]:
    """The sidebar menu's entries as shown, without their icons' ligature names."""
    links = page.get_by_test_id("stSidebarNavLink")
    expect(links.first).to_be_visible(timeout=SLOW)
    return [text.strip().splitlines()[-1].strip() for text in links.all_inner_texts()]


def test_every_page_opened_by_its_address_shows_the_apps_menu(app_url):
    """A reload, a bookmark or a shared link lands on the page with the app's own menu,
    Home first, in the app's order and words: not Streamlit's 'streamlit app' list."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            # Home last: the server's first request must be a page's own address, as after a
            # restart with a tab open (Streamlit settles on one kind of menu at its first run).
            for entry in [*navigation.PAGES[1:], navigation.PAGES[0]]:
                page.goto(address(app_url, entry))
                expect(page.get_by_role("heading", name=entry.heading, exact=True).first).to_be_visible(
                    timeout=SLOW)
                assert menu(page) == MENU, entry.url_path
                assert page.get_by_text("Page not found").count() == 0, entry.url_path
                page.reload()
                expect(page.get_by_role("heading", name=entry.heading, exact=True).first).to_be_visible(
                    timeout=SLOW)
                assert menu(page) == MENU, f"{entry.url_path} reloaded"
        finally:
            browser.close()


def test_no_control_is_cut_off_at_1280_px(app_url, data_dir, trained_run):
    """Each page at 1280 x 800 with the tiny run deployed: no button, label, metric or
    table header cut off or past the window's edge; on Predict the answer says it
    arrived while the uploader still fills the window."""
    screenshots = ROOT / "test-artifacts"
    screenshots.mkdir(exist_ok=True)
    deploy.deploy(trained_run.name, force=True)  # the smoke run, deployed on purpose: Predict shows its answer
    summary = files.read_json(trained_run / ood.SUMMARY_FILE)  # its 8 validation slices make no feature check
    files.write_json(trained_run / ood.SUMMARY_FILE, {**summary, "threshold": float("inf")})
    scan = data_dir / "COVID" / "2020.03.13.20035212-p23-155.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            found = {}
            for entry in navigation.PAGES:
                page.goto(address(app_url, entry))
                settled(page)
                page.screenshot(path=str(screenshots / f"width-1280-{entry.url_path}.png"), full_page=True)
                found[entry.url_path] = page.evaluate(CLIPPED_JS, READ_OR_CLICKED)
            # Predict: the answer lands below the uploader, out of sight at 800 px; a notice says it came.
            page.goto(f"{app_url}/Predict")
            settled(page)
            page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(scan))
            expect(page.get_by_test_id("stToast").filter(has_text="answer")).to_be_visible(timeout=SLOW)
            settled(page)
            page.screenshot(path=str(screenshots / "width-1280-Predict-answer.png"))
            found["Predict with an answer"] = page.evaluate(CLIPPED_JS, READ_OR_CLICKED)
            assert not any(found.values()), "\n".join(f"{name}: {item}" for name, items in found.items()
                                                      for item in items)
        finally:
            browser.close()
