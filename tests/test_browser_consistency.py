"""One number per fact, in a real browser (Chromium through Playwright, as
tests/test_browser.py): the decision threshold set on Evaluate is the one
Misclassified works at, and Evaluate again, after switches by the menu and a
reload; an external set's slice has the same calibrated probability on
Misclassified as on Predict when its file is uploaded there."""
import shutil
from contextlib import contextmanager

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect, sync_playwright

from core.base import files, paths
from core.evaluation import tables
from core.inference import calibration, deploy, external, ood
from core.inference.calibration import percent
from test_browser import CHROMIUM, CHROMIUM_ARGS, SLOW, serve_app

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="no Chromium at /usr/bin/chromium (apt-get install chromium)")
SY575 = paths.SHARED / "data" / "external" / "SY575-COVID19-CT"
EXTERNAL_NAME = "sy575-few"


@contextmanager
def chromium_page():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 800})
        finally:
            browser.close()


def threshold_slider(page):
    """The threshold slider's range input (react-aria: its value in aria-valuetext)."""
    return page.get_by_test_id("stSlider").filter(has_text="Decision threshold").locator("input[type=range]")


def choose_option(page, box_text: str, option: str) -> None:
    """Open the select box and pick `option`; a rerun that redraws the box while it is
    open closes its list, as it would under a user's click: open it again."""
    box = page.get_by_test_id("stSelectbox").filter(has_text=box_text)
    for _ in range(10):
        box.click(timeout=SLOW)
        try:
            page.get_by_role("option", name=option).click(timeout=10_000)
            return
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
    pytest.fail(f"the option {option!r} of {box_text!r} never appeared")


def move_slider(page, slider, fraction: float, away_from: str) -> None:
    """Press the threshold track at `fraction` of its width until the value leaves
    `away_from`: a press during a rerun's redraw can be lost, as a user's could."""
    track = page.get_by_test_id("stSlider").filter(has_text="Decision threshold").locator(
        "div[data-orientation=horizontal]").nth(1)
    for _ in range(10):
        track.scroll_into_view_if_needed()  # below the metrics table, under the fold at 800 px
        box = track.bounding_box()
        page.mouse.move(box["x"] + box["width"] * fraction, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.up()
        page.wait_for_timeout(1500)
        if slider.get_attribute("aria-valuetext") != away_from:
            return
    pytest.fail(f"the threshold slider did not move from {away_from}")


def start(page, url: str) -> None:
    """Open the app at its root, as a user does. (Opened first at a page's own URL, a
    fresh server answers "Page not found" in a modal, which makes the page inert
    until closed, before it has registered its pages.)"""
    page.goto(url)
    expect(page.get_by_test_id("stSidebarNav")).to_be_visible(timeout=SLOW)


def open_by_menu(page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=title).click()
    expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible(timeout=SLOW)


def test_threshold_set_on_evaluate_holds_across_menu_switches_and_a_reload(trained_artifacts, trained_run, tmp_path):
    chosen = f"{calibration.for_run(trained_run).threshold:.3f}"
    with serve_app(tmp_path / "streamlit.log") as url, chromium_page() as page:
        start(page, url)
        open_by_menu(page, "Evaluate")
        slider = threshold_slider(page)
        expect(slider).to_be_visible(timeout=SLOW)
        # Moved only once the page has run to its end: until then a rerun redraws the slider.
        expect(page.get_by_role("heading", name="Cross-validated recipes")).to_be_visible(timeout=SLOW)
        # A click at 30% of the track: a value that is neither the validation choice nor 0.
        move_slider(page, slider, 0.3, away_from=chosen)
        page.wait_for_timeout(2000)  # the rerun the move started
        value = slider.get_attribute("aria-valuetext")
        assert 0.1 < float(value) < 0.5, value

        for title in ("Misclassified", "Evaluate", "Misclassified", "Evaluate", "Misclassified"):
            open_by_menu(page, title)
            expect(threshold_slider(page)).to_have_attribute("aria-valuetext", value, timeout=SLOW)
            if title == "Misclassified":  # the cases listed are cut where the slider says
                expect(page.get_by_text(f"at threshold {float(value):.3f}")).to_be_visible(timeout=SLOW)
        page.reload()
        expect(threshold_slider(page)).to_have_attribute("aria-valuetext", value, timeout=SLOW)
        open_by_menu(page, "Evaluate")
        expect(threshold_slider(page)).to_have_attribute("aria-valuetext", value, timeout=SLOW)
        expect(page.get_by_text(f"Confusion matrix at {float(value):.3f}")).to_be_visible(timeout=SLOW)
        assert page.get_by_test_id("stException").count() == 0


@pytest.fixture
def deployed_with_external(trained_run, tmp_path, monkeypatch):
    """A copy of the tiny run, deployed, with an external set of six SY575
    slices (two patients) evaluated; COVIDCT_ARTIFACTS at it."""
    if not SY575.is_dir():
        pytest.skip("SY575 external set not found")
    artifacts = tmp_path / "artifacts"
    run_dir = artifacts / "runs" / trained_run.name
    shutil.copytree(trained_run, run_dir)
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(artifacts))
    few = tmp_path / "sy575-few"
    for label, patient in (("COVID", "person001"), ("NonCOVID", sorted(p.name for p in (SY575 / "NonCOVID").iterdir()
                                                                       if p.is_dir())[0])):
        (few / label / patient).mkdir(parents=True)
        for image in sorted((SY575 / label / patient).iterdir())[:3]:
            shutil.copy(image, few / label / patient / image.name)
    external.evaluate_on(run_dir, few, name=EXTERNAL_NAME, n_boot=20, report=lambda line: None)
    deploy.deploy(run_dir.name, force=True)
    # The tiny run's feature check is meaningless (8 validation slices): off, as in test_browser.
    summary = files.read_json(run_dir / ood.SUMMARY_FILE)
    files.write_json(run_dir / ood.SUMMARY_FILE, {**summary, "threshold": float("inf")})
    return run_dir, few


def test_an_external_slice_has_one_calibrated_probability_on_misclassified_and_predict(deployed_with_external,
                                                                                    tmp_path):
    run_dir, few = deployed_with_external
    fitted = calibration.for_run(run_dir)
    rows = calibration.calibrated_predictions(external.read_predictions(run_dir, EXTERNAL_NAME), fitted)
    # The first cell with cases at the run's threshold, and its most confident case: Misclassified's first.
    cell, first = next((cell, found.iloc[0]) for cell in ("fp", "fn", "tp", "tn")
                       if len(found := tables.cell_rows(rows, fitted.threshold, cell)))
    expected = percent(first["prob"])
    labels = {"fp": "False positives", "fn": "False negatives", "tp": "True positives", "tn": "True negatives"}
    with serve_app(tmp_path / "streamlit.log") as url, chromium_page() as page:
        start(page, url)
        open_by_menu(page, "Misclassified")
        # The first run loads TensorFlow and draws Grad-CAMs: the boxes wait for it.
        expect(page.get_by_text(" at threshold ")).to_be_visible(timeout=SLOW)
        choose_option(page, "Cases from", f"external: {EXTERNAL_NAME}")
        expect(page.get_by_text(f"in external: {EXTERNAL_NAME} at threshold")).to_be_visible(timeout=SLOW)
        page.get_by_text(labels[cell], exact=True).first.click(timeout=SLOW)
        expect(page.get_by_text(first["path"], exact=True)).to_be_visible(timeout=SLOW)
        shown = page.get_by_test_id("stMetric").filter(has_text="P(COVID)").first
        expect(shown.get_by_test_id("stMetricValue")).to_have_text(expected, timeout=SLOW)

        open_by_menu(page, "Predict")
        expect(page.get_by_text("Model answering:")).to_be_visible(timeout=SLOW)
        page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(few / first["path"]))
        metric = page.get_by_test_id("stMetric").filter(has_text="Probability of COVID")
        expect(metric.get_by_test_id("stMetricValue")).to_have_text(expected, timeout=SLOW)
        # The model card quotes the threshold on the scale the probability is on.
        expect(page.get_by_text(f"threshold {fitted.threshold:.0%} on the calibrated scale")).to_be_visible(
            timeout=SLOW)
        assert page.get_by_test_id("stException").count() == 0
