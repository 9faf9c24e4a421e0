"""The Streamlit app under streamlit.testing.v1.AppTest (no browser).

Every page renders on an empty artifacts folder (and says there is no run)
and with the tiny trained run; the Evaluate threshold slider drives the
metrics shown; a confusion-matrix cell opens Misclassified on that cell; a bad
upload on Predict is named in an error while the good ones in the same batch
get a probability; Train reports config problems, starts a run, refuses a
second one and cancels. The training process itself is faked where a test
would otherwise train (core.jobs.background.launch_training is tested in test_train.py).
"""
import shutil
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dicom_factory import ct_dataset, dicom_bytes
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.inference import calibration, case_log
from core.inference import deploy
from core.inference import lung_focus
from core.jobs import background
from core.evaluation import tables
from core.evaluation import folds
from core.evaluation import classification
from core.runs import lock
from core.inference import ood
from core.jobs import first_model
from core.training import presets
from core.runs import catalogue
from core.runs import storage
from core.base import files
from core.runs.train_config import TrainConfig, recipe_changes
from core.data.images import image_sizes
from ui import navigation
from ui.formatting import upload_name

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 90  # seconds per script run: the first one imports TensorFlow and loads a model
PAGES = ["streamlit_app.py", navigation.DATA, navigation.TRAIN, navigation.SEARCH, navigation.EVALUATE, navigation.MISCLASSIFIED, navigation.PREDICT]
NEEDS_A_RUN = [navigation.EVALUATE, navigation.MISCLASSIFIED, navigation.PREDICT]


def open_page(page: str) -> AppTest:
    """Run `page` the way a browser session reaches it: through the entry point.
    AppTest finds a page by its file only among the pages st.navigation
    registered (their URLs are not their file names): Home runs first."""
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT).run()
    if page != "streamlit_app.py":
        at.switch_page(page).run()
    return at


def assert_no_exception(at: AppTest):
    assert not at.exception, [e.value for e in at.exception]


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


@pytest.fixture
def empty_artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path / "artifacts"))  # does not even exist


@pytest.fixture
def run_id(trained_artifacts, trained_run):
    yield trained_run.name
    deploy.deployed_file().unlink(missing_ok=True)  # a test that deploys leaves the next one undeployed


@pytest.fixture
def deployed(run_id, trained_run):
    """The tiny run deployed despite being a smoke run, its guard's feature
    check off: 8 validation slices give no meaningful 99th percentile, and
    these tests are about what an accepted scan shows (the photo test below
    is refused by the image checks, test_deploy.py tests the feature check)."""
    deploy.deploy(run_id, force=True)
    summary = files.read_json(trained_run / ood.SUMMARY_FILE)
    files.write_json(trained_run / ood.SUMMARY_FILE, {**summary, "threshold": float("inf")})
    return run_id


def calibrated_predictions(run_dir: Path) -> pd.DataFrame:
    """predictions.csv with prob on the calibrated scale, as every page shows it."""
    frame = storage.read_predictions(run_dir)
    return frame.assign(prob=calibration.for_run(run_dir).apply(frame["prob"]))


# ---------------------------------------------------------------------------
# Every page, with and without a run
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES)
def test_page_renders_without_any_run(page, empty_artifacts, data_dir):
    at = open_page(page)
    assert_no_exception(at)
    assert not at.error, texts(at.error)
    if page == navigation.PREDICT:
        assert "No model is deployed yet" in texts(at.info)
        # Straight to Home's one step, which ends with an answer here.
        assert "Train and use a first model" in [link.value for link in at.page_link]
    elif page in NEEDS_A_RUN:
        assert "Train one first" in texts(at.info)
        assert "Go to Train" in [link.value for link in at.page_link]
    if page == "streamlit_app.py":  # Home: the first model's button, with the Fast recipe's estimate
        assert at.button(key="first_model_start").label == "Train and use a first model"
        estimate = presets.estimate(first_model.recipe(), presets.REFERENCE_TRAIN_IMAGES)
        minutes = presets.minutes_text(estimate["minutes"])
        assert f"up to about {minutes}" in texts(at.markdown)  # COVID-CT's 425 training slices


@pytest.mark.parametrize("page", PAGES)
def test_page_without_the_dataset_says_so_instead_of_failing(page, empty_artifacts, tmp_path,
                                                             monkeypatch):
    monkeypatch.setenv("COVIDCT_DATA", str(tmp_path / "no-dataset-here"))
    at = open_page(page)
    assert_no_exception(at)
    if page in (navigation.DATA, "streamlit_app.py"):
        assert "The dataset cannot be read" in texts(at.error)


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_with_the_trained_run(page, run_id):
    at = open_page(page)
    assert_no_exception(at)
    assert not at.error, texts(at.error)
    if page == navigation.PREDICT:  # nothing deployed, and a smoke run is not offered
        assert "No model is deployed yet" in texts(at.info)
        assert "No completed run is fit to deploy" in texts(at.markdown)
    elif page in NEEDS_A_RUN:
        assert at.selectbox(key="run_id").value == run_id
    if page == "streamlit_app.py":  # a smoke run is hidden from the comparison until asked for
        assert not at.dataframe
        at.toggle(key="show_all_runs").set_value(True).run()
        assert run_id in at.dataframe[0].value["run"].tolist()


# ---------------------------------------------------------------------------
# Evaluate and Misclassified
# ---------------------------------------------------------------------------

def shown_metrics(at: AppTest) -> dict:
    return {m.label: m.value for m in at.metric}


def expected_metrics(test: pd.DataFrame, threshold: float) -> dict:
    m = classification.binary_metrics(test["y_true"], test["prob"], threshold)
    return {"Sensitivity": m["recall"], "Specificity": m["specificity"],
            "Precision": m["precision"], "F1": m["f1"], "Accuracy": m["accuracy"]}


def test_evaluate_shows_how_much_the_probabilities_follow_resolution(run_id, trained_run):
    test = storage.read_predictions(trained_run).query("split == 'test'")
    root = Path(files.read_json(trained_run / "config.json")["data_dir"])
    sizes = image_sizes([root / path for path in test.path])
    bias = classification.resolution_bias(test, sizes.width * sizes.height)
    at = open_page(navigation.EVALUATE)
    (caption,) = [c.value for c in at.caption if "Spearman" in c.value]
    for rho in bias.rho:
        assert f"ρ = {rho:+.2f}" in caption


def test_evaluate_shows_the_stored_lung_focus_or_how_to_measure_it(trained_run, tmp_path, monkeypatch):
    run_dir = tmp_path / "artifacts" / "runs" / trained_run.name
    shutil.copytree(trained_run, run_dir)
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path / "artifacts"))
    (run_dir / lung_focus.FILE).unlink(missing_ok=True)
    at = open_page(navigation.EVALUATE)
    assert_no_exception(at)
    assert "Not measured for this run" in texts(at.info)
    assert f"python -m core lung-focus --run {trained_run.name}" in texts(at.code)

    files.write_json(run_dir / lung_focus.FILE, {"test": {"gradcam": {
        "slices": 7, "asked": 8, "in_lungs": 0.31, "lung_share": 0.29, "ratio": 1.07, "peak_in_lungs": 0.1,
        "mostly_outside": 0.9}}})
    at = open_page(navigation.EVALUATE)
    metrics = shown_metrics(at)
    assert metrics["Grad-CAM evidence in the lungs"] == "31%" and metrics["Against an even map"] == "1.07×"
    assert "7 of 8 test slices measured" in texts(at.caption)


def test_evaluate_scores_the_cross_validated_recipes(trained_run, tmp_path, monkeypatch):
    runs_root = tmp_path / "artifacts" / "runs"
    shutil.copytree(trained_run, runs_root / trained_run.name)  # a run for the page to show
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path / "artifacts"))
    at = open_page(navigation.EVALUATE)
    assert_no_exception(at)
    assert "No cross-validation runs yet" in texts(at.info)

    # Two fold runs of the tiny run's recipe, each validating on its own half of its predictions.
    config = files.read_json(trained_run / "config.json")
    val = storage.read_predictions(trained_run).query("split == 'val'")
    halves = [val.iloc[0::2], val.iloc[1::2]]
    for fold, half in enumerate(halves):
        run_dir = storage.new_run({**config, "cv_folds": 2, "cv_fold": fold}, name=f"cv-fold{fold + 1}",
                               runs_root=runs_root)
        files.write_csv(run_dir / "predictions.csv", half)
        storage.set_status(run_dir, "completed")
    summary = folds.cross_validation_summary(halves, seed=config["seed"])

    at = open_page(navigation.EVALUATE)
    assert_no_exception(at)
    (table,) = [frame.value for frame in at.dataframe if "mean_roc_auc" in frame.value]
    assert table.loc[0, "folds"] == "2 of 2"
    assert table.loc[0, "recipe"] == recipe_changes(config)
    assert table.loc[0, "mean_roc_auc"] == pytest.approx(summary["mean_roc_auc"])
    assert table.loc[0, "pooled_roc_auc"] == pytest.approx(summary["pooled_roc_auc"])


def test_threshold_slider_updates_the_metrics_shown(run_id, trained_run):
    test = calibrated_predictions(trained_run).query("split == 'test'")
    chosen = calibration.for_run(trained_run).threshold  # the validation choice, on the calibrated scale
    at = open_page(navigation.EVALUATE)
    slider = at.slider(key=f"threshold_slider_{run_id}")
    assert slider.value == pytest.approx(chosen)  # starts at the validation choice

    seen = []
    for threshold in (0.0, float(test["prob"].median()), 1.0):
        at.slider(key=f"threshold_slider_{run_id}").set_value(threshold).run()
        assert_no_exception(at)
        expected = {label: f"{value:.3f}" for label, value in expected_metrics(test, threshold).items()}
        shown = {label: value for label, value in shown_metrics(at).items() if label in expected}
        assert shown == expected, threshold  # (the calibration section's ECEs are checked below)
        seen.append(expected)
    # Everything positive at 0: sensitivity 1, specificity 0; and the values moved.
    assert seen[0]["Sensitivity"] == "1.000" and seen[0]["Specificity"] == "0.000"
    assert seen[0] != seen[1]

    # The confusion-matrix buttons follow the slider too.
    negatives = int((test["y_true"] == 0).sum())
    at.slider(key=f"threshold_slider_{run_id}").set_value(0.0).run()
    assert at.button(key="open_fp").label == f"False positives ({negatives})"
    assert at.button(key="open_tn").label == "True negatives (0)"


def test_confusion_cell_opens_misclassified_with_that_cell_and_threshold(run_id, trained_run):
    test = storage.read_predictions(trained_run).query("split == 'test'")
    at = open_page(navigation.EVALUATE)
    at.slider(key=f"threshold_slider_{run_id}").set_value(0.0).run()  # every negative is a false positive
    at.button(key="open_fp").click().run()
    assert_no_exception(at)

    assert at.title[0].value == "Misclassified"
    assert at.segmented_control(key="cell").value == "fp"
    assert at.slider(key=f"threshold_slider_{run_id}").value == 0.0
    # Four per page, each the scan and its Grad-CAM, most confident first.
    negatives = test[test["y_true"] == 0].sort_values("prob", ascending=False)
    shown = [m.value for m in at.markdown if m.value.startswith("**NonCOVID/")]
    assert shown == [f"**{path}**" for path in negatives["path"].head(4)]
    captions = [c for image in at.image for c in image.captions]
    assert captions.count("Grad-CAM") == len(shown) and captions.count("scan") == len(shown)

    # AppTest stays on the page it was sent to (a browser follows st.switch_page's URL).
    at.switch_page(navigation.MISCLASSIFIED)
    at.segmented_control(key="cam_method").set_value("gradcam++").run()
    assert at.segmented_control(key="cell").value == "fp"
    assert_no_exception(at)
    assert [c for image in at.image for c in image.captions].count("Grad-CAM++") == len(shown)


# ---------------------------------------------------------------------------
# Predict
# ---------------------------------------------------------------------------

def ct_dicom(png_path: Path) -> bytes:
    """A CT DICOM made from a COVID-CT slice (grey levels as Hounsfield units)."""
    gray = np.asarray(Image.open(png_path).convert("L"), dtype=np.float64)
    return dicom_bytes(ct_dataset((gray / 255 * 1500 - 1350).astype(np.int16)))


def shown_percent(text: str) -> float:
    return {"<1%": 0.0, ">99%": 100.0}.get(text) or float(text.rstrip("%"))


def test_bad_upload_is_named_and_the_good_ones_still_get_a_probability(deployed, trained_run, data_dir,
                                                                        tmp_path):
    row = storage.read_predictions(trained_run).query("split == 'test'").iloc[0]
    png = shutil.copy(data_dir / row["path"], tmp_path / "slice.png")
    earlier = {r["case"] for r in case_log.list_cases()[0]}
    at = open_page(navigation.PREDICT)
    at.file_uploader(key="uploads").set_value([
        ("slice.png", Path(png).read_bytes(), "image/png"),
        ("notes.png", b"these are my notes, not a scan", "image/png"),
        ("slice.dcm", ct_dicom(Path(png)), "application/dicom"),
    ]).run()
    assert_no_exception(at)

    assert len(at.error) == 1 and "notes.png" in at.error[0].value
    assert "not a readable image" in at.error[0].value
    probabilities = [m.value for m in at.metric if m.label == "Probability of COVID"]
    assert len(probabilities) == 2
    # The PNG gets the probability training recorded for this test image, calibrated, in whole percents.
    expected = 100 * float(calibration.for_run(trained_run).apply(row["prob"]))
    assert shown_percent(probabilities[0]) == pytest.approx(expected, abs=1.0)
    captions = [c for image in at.image for c in image.captions]
    assert captions.count("Grad-CAM") == 2 and captions.count("Grad-CAM++") == 2
    # A colour bar under each slice's maps, for the class each decision chose.
    decisions = [m.value for m in at.markdown if m.value.startswith("Decision:")]
    for decision in decisions:
        label = "COVID" if "red-badge[COVID]" in decision else "NonCOVID"
        assert any(c.startswith(f"Heatmap colours: blue = no evidence for {label}, red = the strongest")
                   for c in captions)
    assert "Model answering:" in texts(at.markdown) and "Deployed despite" in texts(at.warning)
    assert [b.label for b in at.download_button] == (
        ["Download Grad-CAM PNG", "Download Grad-CAM++ PNG", "Download the PDF report"] * 2
        + ["Download these 2 answer(s) as CSV", "Download the case log as CSV"])
    # Each answer is in the case log, once, however often the page reruns (docs/records.md).
    at.run()
    logged, problems = case_log.list_cases()
    new = sorted(r["file"] for r in logged if r["case"] not in earlier)
    assert problems == [] and new == ["slice.dcm", "slice.png"]
    # Three slices uploaded together and answered one by one: they are offered as one scan.
    assert "3 slices were uploaded together" in texts(at.info)
    at.button(key="offer_one_scan").click().run()
    assert_no_exception(at)
    assert at.checkbox(key="one_scan").value


def test_predict_refuses_a_photo_until_asked(deployed):
    from sklearn.datasets import load_sample_image

    photo = Image.fromarray(load_sample_image("flower.jpg"))
    buffer = __import__("io").BytesIO()
    photo.save(buffer, format="PNG")
    at = open_page(navigation.PREDICT)
    at.file_uploader(key="uploads").set_value([("flower.png", buffer.getvalue(), "image/png")]).run()
    assert_no_exception(at)
    assert "Not like the training slices — no prediction: a colour image" in texts(at.warning)
    assert not [m for m in at.metric if m.label == "Probability of COVID"]

    at.checkbox(key="show_anyway_0").check().run()  # the user may still ask: greyed, no decision badge
    assert_no_exception(at)
    assert not at.metric
    (answer,) = [m.value for m in at.markdown if "not a valid prediction" in m.value]
    assert answer.startswith(":gray[") and not [m for m in at.markdown if "-badge[" in m.value]
    # Its heatmaps are labelled as no valid prediction, and it gets no report (the log keeps the refusal).
    assert [b.label for b in at.download_button if "Grad-CAM" in b.label] == [
        "Download Grad-CAM PNG (not a valid prediction)", "Download Grad-CAM++ PNG (not a valid prediction)"]
    assert "Download the PDF report" not in [b.label for b in at.download_button]


def test_evaluate_deploys_a_smoke_run_only_after_confirmation(run_id, trained_run):
    at = open_page(navigation.EVALUATE)
    assert_no_exception(at)
    assert "trained on a subset (8 images per split)" in texts(at.warning)
    assert button(at, "Use this model for predictions").disabled
    at.checkbox(key="evaluate_confirm").check().run()
    button(at, "Use this model for predictions").click().run()
    assert_no_exception(at)
    assert f"Run {run_id} now answers on Predict" in texts(at.success)
    record = deploy.deployed_record()
    assert record["run"] == run_id and record["confirmed_despite"] == deploy.problems(catalogue.load_run(trained_run))

    at = open_page(navigation.EVALUATE)  # now it says so instead of offering it again
    assert "This model answers on Predict" in texts(at.success)
    at = open_page(navigation.PREDICT)
    assert run_id in texts(at.markdown) and "Deployed despite: it was trained on a subset" in texts(at.warning)


def test_evaluate_shows_the_test_ece_before_and_after_calibration(run_id, trained_run):
    test = calibrated_predictions(trained_run).query("split == 'test'")
    raw = storage.read_predictions(trained_run).query("split == 'test'")
    at = open_page(navigation.EVALUATE)
    metrics = shown_metrics(at)
    after = calibration.expected_calibration_error(test.y_true, test.prob)
    assert metrics["Calibration error, calibrated"] == f"{after:.3f}"
    assert metrics["Calibration error, model's own"] == \
        f"{calibration.expected_calibration_error(raw.y_true, raw.prob):.3f}"


def test_script_runs_keep_tensorflow_kernels(deployed, data_dir, monkeypatch):
    """Streamlit clears the Keras session after each script run, which throws
    away TensorFlow's compiled kernels (0.5 s per model call in the next run);
    the app turns that off (ui.frame.keep_tensorflow_kernels)."""
    import keras

    cleared = []
    monkeypatch.setattr(keras.backend, "clear_session", lambda *args, **kwargs: cleared.append(1))
    scan = data_dir / "COVID" / "2020.03.13.20035212-p23-155.png"
    at = open_page(navigation.PREDICT)
    for _ in range(2):
        at.file_uploader(key="uploads").set_value([(scan.name, scan.read_bytes(), "image/png")]).run()
        assert_no_exception(at)
    assert [m.label for m in at.metric] == ["Probability of COVID"]
    assert cleared == []


# ---------------------------------------------------------------------------
# Train
# ---------------------------------------------------------------------------

def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def test_train_form_has_every_setting_and_reports_problems(empty_artifacts, data_dir):
    at = open_page(navigation.TRAIN)
    for field in fields(TrainConfig):
        assert f"cfg_{field.name}" in at.session_state, field.name
    assert not at.error and not button(at, "Start training").disabled
    captions = [c for image in at.image for c in image.captions]
    assert captions.count("augmented") == 4  # the augmentation preview

    at.number_input(key="cfg_head_lr").set_value(2.0)
    at.number_input(key="cfg_contrast").set_value(3.0)
    at.text_input(key="cfg_data_dir").set_value("/nowhere").run()
    assert_no_exception(at)
    problems = texts(at.error)
    assert "head_lr 2.0 must be in (0, 1)" in problems and "data_dir /nowhere: no such folder" in problems
    assert "augmentation: The `factor` argument" in problems  # Keras' own check of the contrast
    assert button(at, "Start training").disabled


def test_train_starts_refuses_a_second_run_and_cancels(empty_artifacts, data_dir, monkeypatch):
    started = []

    def fake_launch(config, name=None, runs_root=None):
        """What launch_training leaves behind, without the training process:
        a 'running' run whose pid (this process) is alive."""
        started.append(config)
        return storage.new_run(asdict(config), name=name, runs_root=runs_root)

    monkeypatch.setattr(background, "launch_training", fake_launch)
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")  # the page sets it for the child: undone after the test
    at = open_page(navigation.TRAIN)
    at.number_input(key="cfg_input_size").set_value(64)
    at.text_input(key="run_name").set_value("from-the-app")
    button(at, "Start training").click().run()
    assert_no_exception(at)

    assert len(started) == 1 and started[0].input_size == 64
    assert started[0] == TrainConfig(input_size=64)  # every other setting at its default
    run = catalogue.list_runs()[0]
    assert run["id"].endswith("-from-the-app")
    assert f"Started run {run['id']}" in texts(at.success)
    assert any(run["id"] in m.value and "running" in m.value for m in at.markdown)

    at.run()  # Start waits while the run trains
    assert button(at, "Start training").disabled
    assert f"Run {run['id']} is training" in texts(at.caption)

    button(at, "Cancel this run").click().run()
    assert (run["path"] / "cancel").exists()
    assert "Cancel requested" in texts(at.info)


def test_a_preset_fills_the_form_and_the_estimate_follows(empty_artifacts, data_dir):
    at = open_page(navigation.TRAIN)
    default_estimate = next(i.value for i in at.info if i.value.startswith("Estimate"))
    at.button(key="preset_quick_look").click().run()
    assert_no_exception(at)
    quick = presets.PRESETS[presets.QUICK_LOOK]
    for setting, value in quick.items():
        assert at.session_state[f"cfg_{setting}"] == value, setting
    assert at.number_input(key="cfg_max_images_per_split").value == 40
    assert at.session_state["cfg_seed"] == TrainConfig().seed  # the rest stays at the defaults
    quick_estimate = next(i.value for i in at.info if i.value.startswith("Estimate"))
    assert quick_estimate != default_estimate and "about **2 min**" in quick_estimate
    # Each preset's label states the minutes its box states (one estimate, core.training.presets).
    assert at.button(key="preset_quick_look").label == f"{presets.QUICK_LOOK} (up to 2 min)"
    at.button(key="preset_default").click().run()
    default_minutes = next(i.value for i in at.info if i.value.startswith("Estimate")).split("**")[1]
    assert at.button(key="preset_default").label == f"Default (up to {default_minutes})"
    # Every setting has a human label and a one-line help.
    form = {w.key: w for w in [*at.number_input, *at.checkbox, *at.selectbox, *at.text_input]
            if str(w.key).startswith("cfg_")}
    for field in fields(TrainConfig):
        label = form[f"cfg_{field.name}"].label
        assert label not in (field.name, field.name.replace("_", " ").capitalize()), field.name
        assert form[f"cfg_{field.name}"].help, field.name


def test_start_while_another_process_trains_shows_training_busy(empty_artifacts, data_dir):
    # The lock of a live training process (this one); the real launch_training refuses.
    lock.acquire_training_lock("someone-elses-run")
    try:
        at = open_page(navigation.TRAIN)
        button(at, "Start training").click().run()
    finally:
        lock.release_training_lock()
    assert_no_exception(at)
    assert "Not started: training run someone-elses-run is already running" in texts(at.error)
    assert catalogue.list_runs() == []


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

def test_duplicate_audit_shows_the_pairs(tmp_path, monkeypatch, data_dir):
    """On a small copy of COVID-CT with one image copied into the other class."""
    covid = sorted((data_dir / "COVID").glob("*.png"))[:8]
    noncovid = sorted((data_dir / "NonCOVID").glob("*.jpg"))[:8]
    for label, files in (("COVID", covid), ("NonCOVID", noncovid)):
        (tmp_path / "data" / label).mkdir(parents=True)
        for path in files:
            shutil.copy(path, tmp_path / "data" / label / path.name)
    shutil.copy(covid[0], tmp_path / "data" / "NonCOVID" / "copy.png")
    monkeypatch.setenv("COVIDCT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path / "artifacts"))

    at = open_page(navigation.DATA)
    assert_no_exception(at)
    button(at, "Run the duplicate audit").click().run()
    assert_no_exception(at)
    metrics = shown_metrics(at)
    assert int(metrics["Across classes"]) >= 1
    captions = [c for image in at.image for c in image.captions]
    assert any(c.startswith(f"COVID/{covid[0].name}") for c in captions)
    assert any(c.startswith("NonCOVID/copy.png") for c in captions)
    assert "exact duplicate" in texts(at.markdown)


@pytest.mark.parametrize("crafted, shown", [
    ("../../etc/passwd", "passwd"),
    ("C:\\Users\\x\\scan.png", "scan.png"),
    ("/abs/path/scan.png", "scan.png"),
    ("evil\x00name.png", "evilname.png"),
    ("a_b-[x](y).png", "a\\_b\\-\\[x\\]\\(y\\).png"),  # no Markdown link survives
])
def test_upload_names_cannot_point_at_paths_or_inject_markdown(crafted, shown):
    assert upload_name(crafted) == shown


def test_server_config_keeps_xsrf_protection_and_an_upload_limit():
    import tomllib
    from pathlib import Path

    config = tomllib.loads((Path(__file__).parent.parent / ".streamlit" / "config.toml").read_text())
    assert config["server"]["enableXsrfProtection"] is True
    assert 0 < config["server"]["maxUploadSize"] <= 200


def test_evaluate_shows_external_results_and_misclassified_reviews_their_cases(trained_run, tmp_path,
                                                                               monkeypatch):
    import json

    from core.inference import external
    from core.base import paths

    sy575 = paths.SHARED / "data" / "external" / "SY575-COVID19-CT"
    if not sy575.is_dir():
        pytest.skip("external set not found")
    run_dir = tmp_path / "artifacts" / "runs" / trained_run.name
    shutil.copytree(trained_run, run_dir)
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path / "artifacts"))

    at = open_page(navigation.EVALUATE)
    assert_no_exception(at)
    folder = next(box for box in at.text_input if box.label == "Dataset folder")
    folder.set_value(str(tmp_path / "no-such-folder"))
    at = next(button for button in at.button if button.label == "Start").click().run()
    assert "no-such-folder: dataset folder not found" in texts(at.error)

    external.evaluate_on(run_dir, sy575, n_boot=50, report=lambda line: None)
    stored = json.loads((run_dir / "external" / "SY575-COVID19-CT" / "metrics.json").read_text())
    at = open_page(navigation.EVALUATE)
    assert_no_exception(at)
    (table,) = [frame.value for frame in at.dataframe if "level" in frame.value.columns]
    patients = table[(table["set"] == "SY575-COVID19-CT") & (table["level"] == "patients")].iloc[0]
    assert patients["n"] == 4
    assert patients["sensitivity"] == pytest.approx(stored["patient"]["at_threshold"]["recall"])
    slices = table[(table["set"] == "SY575-COVID19-CT") & (table["level"] == "slices")].iloc[0]
    assert slices["n"] == 48 and slices["accuracy"] == pytest.approx(stored["slice"]["at_threshold"]["accuracy"])

    at = open_page(navigation.MISCLASSIFIED)
    assert_no_exception(at)
    cases = next(box for box in at.selectbox if box.label == "Cases from")
    at = cases.set_value("external:SY575-COVID19-CT").run()
    assert_no_exception(at)
    rows = external.read_predictions(run_dir, "SY575-COVID19-CT")
    expected = tables.cell_rows(rows, stored["threshold"], at.session_state["cell"])
    (caption,) = [c.value for c in at.caption if " at threshold " in c.value]
    assert caption.startswith(f"{len(expected)} ") and "in external: SY575-COVID19-CT" in caption
