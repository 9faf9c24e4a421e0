"""A newcomer's road, timed in a real browser (Debian's Chromium through
Playwright): from starting the app on a fresh artifacts folder to the first
answer on Predict, through Home's one step "Train and use a first model".

    python bench/first_prediction.py [--recipe JSON] [--timeout MINUTES] [--keep]

Starts `streamlit run streamlit_app.py` on a free port with $COVIDCT_ARTIFACTS
at a new temporary folder (no run, nothing deployed), then: Home drawn ->
the button clicked -> the run trained and deployed by itself (Home says so)
-> one real COVID-CT slice uploaded on Predict -> its probability drawn.
Prints each stage's seconds and the total. --recipe sets
$COVIDCT_FIRST_MODEL_RECIPE (core.jobs.first_model), e.g. a tiny recipe to
check that the bench works: '{"input_size": 64, "train_from": "head", "head_epochs": 2}'.
A run that misses the quality floor is reported as such (exit code 1).
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from core.base import paths

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# A COVID-CT test-split slice: a validation slice is part of the guard's own reference, and the
# first one listed sits at its 99th percentile, so a model may refuse it.
SLICE = "COVID/2020.03.22.20040782-p25-1542.png"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def start_app(artifacts: Path, recipe: str | None, log) -> tuple[subprocess.Popen, str]:
    """The app on a free port, its runs in `artifacts`; returns (process, url) once it answers."""
    port = free_port()
    env = {**os.environ, "COVIDCT_ARTIFACTS": str(artifacts)}
    if recipe:
        env["COVIDCT_FIRST_MODEL_RECIPE"] = recipe
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless",
                               "true", "--server.port", str(port), "--server.fileWatcherType", "none"],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.status == 200:
                    return server, url
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"streamlit did not start (log: {log.name})") from None
            time.sleep(0.2)


def drive(url: str, scan: Path, timeout_ms: int, started: float, marks: dict) -> None:
    """Home -> the button -> deployed -> Predict answers; into `marks`, the seconds since
    `started` at each stage reached (kept when a later stage fails)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url)
        button = page.get_by_role("button", name="Train and use a first model")
        expect(button).to_be_visible(timeout=120_000)
        marks["home drawn"] = time.perf_counter() - started
        button.click()
        expect(page.get_by_text("so far; early stopping").first).to_be_visible(timeout=120_000)  # time left
        marks["training shown"] = time.perf_counter() - started
        answered = page.get_by_text("answers on Predict").or_(page.get_by_text("not fit to answer"))
        expect(answered).to_be_visible(timeout=timeout_ms)
        marks["trained and deployed"] = time.perf_counter() - started
        if page.get_by_text("not fit to answer").count():
            print(page.get_by_text("not fit to answer").inner_text())
            browser.close()
            return
        page.get_by_role("link", name="Go to Predict").click()
        page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(scan))
        probability = page.get_by_test_id("stMetric").filter(has_text="Probability of")
        refusal = page.get_by_text("no prediction:")
        expect(probability.or_(refusal).first).to_be_visible(timeout=300_000)
        if probability.count():
            marks["first answer on Predict"] = time.perf_counter() - started
        else:  # the guard refused the slice: an answer, but not a prediction
            marks["slice refused on Predict"] = time.perf_counter() - started
            print(refusal.first.inner_text())
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", help="JSON object of TrainConfig settings (sets $COVIDCT_FIRST_MODEL_RECIPE)")
    parser.add_argument("--timeout", type=float, default=40, help="minutes to wait for training and deploying")
    parser.add_argument("--keep", action="store_true", help="keep the temporary artifacts folder")
    args = parser.parse_args()
    if args.recipe:
        json.loads(args.recipe)  # a typo stops here, not in the app
    artifacts = Path(tempfile.mkdtemp(prefix="first-prediction-"))
    scan = paths.data_dir() / SLICE
    with open(artifacts.with_suffix(".log"), "w") as log:
        started = time.perf_counter()
        server, url = start_app(artifacts, args.recipe, log)
        marks = {}
        try:
            drive(url, scan, int(args.timeout * 60_000), started, marks)
        finally:
            for stage, seconds in marks.items():
                print(f"{stage:>26}: {seconds:7.1f} s after starting the app")
            server.terminate()
            server.wait(timeout=30)
    run = next((artifacts / "runs").glob("*-first-model"), None)
    if run:
        status = json.loads((run / "status.json").read_text())
        print(f"run {run.name}: trained in {status.get('train_seconds')} s; recipe "
              + json.dumps({k: v for k, v in json.loads((run / "config.json").read_text()).items()
                            if k in ("input_size", "head_epochs", "finetune_epochs", "train_from")}))
    print(f"app log: {log.name}" + (f"; artifacts kept in {artifacts}" if args.keep else ""))
    if not args.keep:
        shutil.rmtree(artifacts, ignore_errors=True)
    return 0 if "first answer on Predict" in marks else 1


if __name__ == "__main__":
    sys.exit(main())
