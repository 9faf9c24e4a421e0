"""Shared pieces of the Streamlit pages: cached loaders over `core`, the run
picker and threshold slider that follow the user from page to page, and the
charts that more than one page draws.

Caching rule: whatever is read from disk is cached under its path and its
modification time, so nothing is computed twice, and a dataset that changes
or a run that is rewritten is picked up at the next rerun. Models are
resources (st.cache_resource, one per run, shared by all sessions); data and
arrays are values (st.cache_data).
"""
from __future__ import annotations

import dataclasses
import io
import os
import re
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: no start-up chatter

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from PIL import Image
from plotly.subplots import make_subplots
from streamlit.runtime.scriptrunner import script_runner

from core.data import audit
from core.inference import calibration
from core.training import cross_validation
from core.data import datasets
from core.inference import deploy
from core.evaluation import tables
from core.evaluation import classification
from core.inference import external
from core.data import images
from core.base import paths
from core.runs import storage
from core.runs import catalogue
from core.inference.explain import colour_bar, overlay
from core.inference.predict import Prediction, Predictor

# Page files, for st.page_link and st.switch_page; streamlit_app.py routes to
# them (st.navigation), in the order of PAGES, which also draws the sidebar menu.
HOME = "pages/0_Home.py"
DATA = "pages/1_Data.py"
TRAIN = "pages/2_Train.py"
SEARCH = "pages/6_Search.py"
EVALUATE = "pages/3_Evaluate.py"
MISCLASSIFIED = "pages/4_Misclassified.py"
PREDICT = "pages/5_Predict.py"
PAGES = [(HOME, "Home", ":material/home:"), (DATA, "Data", ":material/database:"),
         (TRAIN, "Train", ":material/model_training:"), (SEARCH, "Search", ":material/tune:"),
         (EVALUATE, "Evaluate", ":material/monitoring:"),
         (MISCLASSIFIED, "Misclassified", ":material/image_search:"),
         (PREDICT, "Predict", ":material/upload_file:")]


def icon(page: str) -> str:
    """The page's icon in the menu, for links to it."""
    return next(icon for path, _, icon in PAGES if path == page)

UPLOAD_TYPES = ["png", "jpg", "jpeg", "bmp", "tif", "tiff", "dcm", "dicom"]
CAM_METHODS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}
# The four cells of the confusion matrix, as the Misclassified page names them.
CELLS = {"fp": "False positives", "fn": "False negatives",
         "tp": "True positives", "tn": "True negatives"}
TRAIN_COLOR, VAL_COLOR = "#1f77b4", "#ff7f0e"
# The same class colours on every chart; a class name not listed gets Plotly's next colour.
CLASS_COLORS = {"COVID": "#e45756", "NonCOVID": "#4c78a8"}


def _keep_tensorflow_kernels() -> None:
    """Streamlit calls keras.backend.clear_session() after every script run
    (script_runner._clean_problem_modules, Streamlit 1.67), to free the models
    that scripts build on each run. That also empties TensorFlow's kernel
    cache, so in the next run the first call of each compiled model rebuilds
    its kernels: 0.5 s more for a prediction, and again for its Grad-CAM.
    This app builds its models once (st.cache_resource) and keeps them; it
    draws no matplotlib figure (the function's other duty)."""
    script_runner._clean_problem_modules = lambda: None


_keep_tensorflow_kernels()

DISCLAIMER = ("Research use only. This tool is not a medical device and must not be used "
              "to diagnose, treat or rule out COVID-19.")


def page_setup(title: str) -> None:
    """The first call of every page: page config, title, and the disclaimer
    under the sidebar menu (which st.navigation draws, streamlit_app.py)."""
    st.set_page_config(page_title=f"{title} · COVID-19 CT Explorer", layout="wide",
                       page_icon=":material/pulmonology:")
    st.sidebar.caption(DISCLAIMER)
    st.title(title)


def forget_train_form() -> None:
    """Drop the Train form's values (keys 'cfg_<name>'), so that it shows the (new) defaults."""
    for key in [k for k in st.session_state if str(k).startswith("cfg_")]:
        del st.session_state[key]


def train_form_config(defaults):
    """The TrainConfig the Train form holds in this session (its widgets keep
    their values under 'cfg_<name>'), over `defaults` for fields never set;
    as the form does, an empty text is None where the field allows None."""
    values = {}
    for field in dataclasses.fields(defaults):
        value = st.session_state.get(f"cfg_{field.name}", getattr(defaults, field.name))
        if isinstance(value, str):
            value = value.strip() or (None if "None" in str(field.type) else "")
        values[field.name] = value
    return type(defaults)(**values)


def mtime(path) -> float:
    """Modification time, 0 for a missing file: part of every cache key."""
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


def fmt(value, digits: int = 3) -> str:
    """A metric for display; "–" when unknown (None or NaN)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


# ---------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------

def dataset_stamp(data_dir) -> float:
    """Latest change to the dataset (each source of it): adding or removing an
    image changes its folder's mtime; split lists and metadata tables are
    checked one by one."""
    stamps = [0.0]
    for root in datasets.source_dirs(data_dir):
        if root.is_dir():
            entries = [root, *root.iterdir(), *root.glob("splits/*"), *root.glob("meta/*")]
            stamps += [mtime(p) for p in entries]
    return max(stamps)


@st.cache_data(show_spinner="Indexing the dataset…")
def _index(root: str, stamp: float) -> pd.DataFrame:
    return datasets.index_dataset(root)


def load_index(root=None) -> pd.DataFrame:
    """core.data.datasets.index_dataset, cached; raises ValueError for a missing or malformed dataset."""
    root = root or paths.data_dir()
    root = os.pathsep.join(map(str, root)) if isinstance(root, (list, tuple)) else str(root)
    return _index(root, dataset_stamp(root))


def index_or_stop() -> pd.DataFrame:
    """The dataset index, or an error on the page (and the page stops there)."""
    try:
        return load_index()
    except ValueError as error:
        st.error(f"The dataset cannot be read: {error}. Set $COVIDCT_DATA to the COVID-CT folder.")
        st.stop()


@st.cache_data(show_spinner="Reading image sizes…")
def _sizes(root: str, stamp: float) -> pd.DataFrame:
    index = _index(root, stamp)
    return pd.concat([index, images.image_sizes(index["path"])], axis=1)


def image_sizes(root=None) -> pd.DataFrame:
    """The index with width and height columns (read from the file headers)."""
    root = str(root or paths.data_dir())
    return _sizes(root, dataset_stamp(root))


@st.cache_data(show_spinner="Hashing every image (exact and perceptual hashes)…")
def _audit(root: str, stamp: float) -> pd.DataFrame:
    return audit.audit_duplicates(_index(root, stamp))


def duplicate_audit(root=None) -> pd.DataFrame:
    root = str(root or paths.data_dir())
    return _audit(root, dataset_stamp(root))


@st.cache_data(max_entries=32, show_spinner=False)  # decoded scans can be megabytes each
def read_image(source: str | bytes, name: str, stamp: float = 0.0) -> np.ndarray:
    """core.data.images.load_image of a path or of uploaded bytes (stamp: the file's
    mtime, so an edited file is read again). Raises ImageReadError."""
    return images.load_image(source, name=name)


@st.cache_data(max_entries=512, show_spinner=False)
def thumbnail(path: str, size: int = 220) -> np.ndarray:
    """A scan shrunk to fit size x size, keeping its aspect ratio."""
    image = Image.fromarray(images.load_image(path))
    image.thumbnail((size, size))
    return np.asarray(image)


# ---------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------

def run_label(run: dict) -> str:
    test = ((run["metrics"] or {}).get("test") or {}).get("at_threshold") or {}
    auc = f" · test ROC-AUC {fmt(test['roc_auc'])}" if test.get("roc_auc") is not None else ""
    config = run["config"]
    return f"{run['id']} ({config.get('backbone', '?')}, {config.get('input_size', '?')} px{auc})"


def no_runs_yet(what: str = "a completed training run") -> None:
    st.info(f"This page needs {what}, and there is none yet in {paths.runs_dir()}. "
            "Train one first.")
    st.page_link(TRAIN, label="Go to Train", icon=icon(TRAIN))


def pick_run(needs_test_results: bool = True) -> dict:
    """Select a completed run (newest first). The choice is kept for the whole
    session, so Evaluate, Misclassified and Predict show the same run. With no
    usable run the page says so, links to Train and stops."""
    usable = [run for run in catalogue.list_runs()
              if (catalogue.has_results(run) if needs_test_results else catalogue.has_model(run))]
    if not usable:
        no_runs_yet()
        st.stop()
    by_id = {run["id"]: run for run in usable}
    if st.session_state.get("run_id") not in by_id:
        st.session_state["run_id"] = usable[0]["id"]
    run_id = st.selectbox("Run", list(by_id), format_func=lambda i: run_label(by_id[i]),
                          key="run_id", persist_state="session")
    return by_id[run_id]


def deploy_controls(run: dict, key: str) -> None:
    """"Use this model for predictions" for `run`. A run with problems
    (core.inference.deploy.problems: subset, not completed, below the quality floor)
    gets the reasons and a confirmation box first; the button waits for it."""
    record = deploy.deployed_record() or {}
    if record.get("run") == run["id"]:
        st.success(f"This model answers on Predict (deployed {record.get('deployed_at', '')}).",
                   icon=":material/check_circle:")
        return
    found = deploy.problems(run)
    confirmed = True
    if found:
        st.warning("Not fit to answer for clinicians: " + "; ".join(found) + f". Quality floor: {deploy.FLOOR}.",
                   icon=":material/block:")
        confirmed = st.checkbox("Deploy it anyway: I know why it is not fit", key=f"{key}_confirm")
    if st.button("Use this model for predictions", key=f"{key}_deploy", disabled=not confirmed,
                 icon=":material/rocket_launch:"):
        with st.spinner("Preparing the model: calibration, and features of the training scans to recognise "
                        "inputs unlike them (about a minute for a full run)…"):
            try:
                deploy.deploy(run["id"], force=bool(found) and confirmed)
            except (ValueError, OSError) as error:
                st.error(f"Not deployed: {error}")
                return
        st.success(f"Run {run['id']} now answers on Predict and in `python -m core predict`.")
        st.page_link(PREDICT, label="Go to Predict", icon=icon(PREDICT))


def class_names(run: dict) -> tuple[str, str]:
    """(negative, positive) class names of a run."""
    return storage.class_names(run["config"], run["metrics"])


def chosen_threshold(run: dict) -> float:
    """The validation-chosen threshold on the calibrated scale (as predictions(run) are)."""
    return run_calibration(run).threshold


@st.cache_data(max_entries=32, show_spinner=False)
def _calibration(run_path: str, stamp: float) -> calibration.Calibration:
    return calibration.for_run(run_path)


def run_calibration(run: dict) -> calibration.Calibration:
    """core.inference.calibration.for_run, cached until predictions.csv changes."""
    return _calibration(str(run["path"]), mtime(run["path"] / "predictions.csv"))


def threshold_slider(run: dict) -> float:
    """The decision threshold for `run`, shared by Evaluate and Misclassified.
    It starts at the threshold chosen on the validation split."""
    key = f"threshold_{run['id']}"
    chosen = chosen_threshold(run)
    st.session_state.setdefault(key, chosen)
    threshold = st.slider(
        "Decision threshold: a probability of COVID-19 at or above it counts as positive",
        0.0, 1.0, step=0.001, format="%.3f", key=key, persist_state="session")
    # A callback, because a widget's value can only be set before it is drawn.
    st.button(f"Reset to the threshold chosen on validation ({chosen:.3f})", type="tertiary",
              icon=":material/restart_alt:", key=f"reset_{key}", disabled=threshold == chosen,
              on_click=lambda: st.session_state.update({key: chosen}))
    return threshold


@st.cache_data(max_entries=32, show_spinner=False)
def _predictions(run_path: str, stamp: float) -> pd.DataFrame:
    return storage.read_predictions(run_path)


def predictions(run: dict) -> pd.DataFrame:
    """The run's predictions.csv (path, y_true, prob, split), cached, with
    prob calibrated (core.inference.calibration) and the model's own in raw_prob."""
    frame = _predictions(str(run["path"]), mtime(run["path"] / "predictions.csv"))
    return frame.assign(raw_prob=frame["prob"], prob=run_calibration(run).apply(frame["prob"]))


@st.cache_data(max_entries=32, show_spinner=False)
def _history(run_path: str, stamp: float) -> pd.DataFrame:
    return storage.read_history(run_path)


def history(run: dict) -> pd.DataFrame:
    """The run's per-epoch log (empty before the first epoch ends), cached
    until the training process appends the next epoch."""
    try:
        return _history(str(run["path"]), mtime(run["path"] / "history.csv"))
    except pd.errors.ParserError:  # caught mid-write: the next refresh reads it whole
        return pd.DataFrame()


@st.cache_data(max_entries=32, show_spinner=False)
def _pixel_counts(files: tuple) -> np.ndarray:
    sizes = images.image_sizes(files)
    return (sizes.width * sizes.height).to_numpy()


def pixel_counts(run: dict, relpaths) -> np.ndarray:
    """width x height of each image file (NaN where unreadable), from headers, cached."""
    return _pixel_counts(tuple(str(catalogue.image_path(run, relpath)) for relpath in relpaths))


def runs_table(all_runs: list[dict], key: str = "show_all_runs") -> None:
    """catalogue.compare_runs as a table: settings and test metrics of every
    completed full-data run; a toggle adds smoke (subset), cancelled and failed runs."""
    shown = [run for run in all_runs if deploy.for_comparison(run)]
    hidden = len(all_runs) - len(shown)
    if hidden and st.toggle(f"Show smoke, cancelled and failed runs ({hidden})", key=key,
                            help="Runs on a subset of the images, or that did not complete: their "
                                 "figures do not estimate anything."):
        shown = all_runs
    if not shown:
        st.info("No completed full-data run yet.")
        return
    table = catalogue.compare_runs(shown)
    # Results first, then the settings that produced them.
    results = [c for c in table if c.startswith(("val_", "test_"))]
    table = table[["run", "state", *results, *[c for c in table if c not in results + ["run", "state"]]]]
    numbers = {c: st.column_config.NumberColumn(format="%.3f") for c in results}
    st.dataframe(table, hide_index=True, column_config={
        **numbers,
        "head_lr": st.column_config.NumberColumn(format="%.0e"),
        "finetune_lr": st.column_config.NumberColumn(format="%.0e"),
        "train_seconds": st.column_config.NumberColumn("train s", format="%.0f"),
    })


@st.cache_data(max_entries=8, show_spinner="Scoring the cross-validated recipes…")
def _cross_validation(run_paths: tuple, stamps: tuple) -> pd.DataFrame:
    return cross_validation.cross_validation_table([catalogue.load_run(path) for path in run_paths])


def cross_validation_table(all_runs: list[dict]) -> pd.DataFrame:
    """cross_validation.cross_validation_table over the completed fold runs, cached until
    one of their predictions changes or a fold is added."""
    folds = [run for group in catalogue.cross_validation_groups(all_runs) for run in group]
    return _cross_validation(tuple(str(run["path"]) for run in folds),
                             tuple(mtime(run["path"] / "predictions.csv") for run in folds))


# ---------------------------------------------------------------------------
# External validation
# ---------------------------------------------------------------------------

def external_sets(run: dict) -> list[dict]:
    """core.inference.external.list_external: the run's external results, complete or not."""
    return external.list_external(run["path"])


@st.cache_data(max_entries=32, show_spinner=False)
def _external_predictions(run_path: str, name: str, stamp: float) -> pd.DataFrame:
    return external.read_predictions(run_path, name)


def external_predictions(run: dict, name: str) -> pd.DataFrame:
    """One external set's predictions.csv (path, label, y_true, prob, patient_id), cached."""
    folder = external.results_dir(run["path"], name)
    return _external_predictions(str(run["path"]), name, mtime(folder / "predictions.csv"))


def roc_figure(curves: dict) -> go.Figure:
    """ROC curves of several prediction sets, {name: (y_true, prob)}, on one chart."""
    figure = go.Figure()
    for name, (y_true, prob) in curves.items():
        points = tables.roc_points(y_true, prob)
        auc = classification.binary_metrics(y_true, prob)["roc_auc"]
        figure.add_scatter(x=points["fpr"], y=points["tpr"], mode="lines", name=f"{name} (AUC {fmt(auc)})")
    figure.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line_dash="dot", line_color="gray", showlegend=False)
    figure.update_layout(title="ROC curves", height=400, xaxis_title="1 − specificity", yaxis_title="sensitivity",
                         legend=dict(x=0.98, y=0.02, xanchor="right", yanchor="bottom"))
    return figure


def review_sets(run: dict) -> dict[str, str]:
    """The prediction sets a run's cases can be reviewed in: {key: label}."""
    complete = [found["name"] for found in external_sets(run) if found["state"] == "completed"]
    return {"test": "test", "val": "val", **{f"external:{name}": f"external: {name}" for name in complete}}


def review_predictions(run: dict, key: str) -> pd.DataFrame:
    """The predictions of one review set (see review_sets) with each image's
    file in column "file"."""
    if key.startswith("external:"):
        name = key.removeprefix("external:")
        rows = external_predictions(run, name).copy()
        root = Path({found["name"]: found for found in external_sets(run)}[name]["metrics"]["data_dir"])
        rows["file"] = [str(root / relpath) for relpath in rows["path"]]
        return rows
    rows = predictions(run)
    rows = rows[rows["split"] == key].copy()
    rows["file"] = [str(catalogue.image_path(run, relpath)) for relpath in rows["path"]]
    return rows


# ---------------------------------------------------------------------------
# Model: prediction and Grad-CAM
# ---------------------------------------------------------------------------

@st.cache_resource(max_entries=2, show_spinner="Loading the model…")
def _predictor(run_path: str, model_stamp: float) -> Predictor:
    return Predictor.from_run(run_path)


def model_stamp(run: dict) -> float:
    """Changes when the model, its predictions (and so its calibration) or its
    out-of-distribution reference (built when deployed) change."""
    return max(mtime(run["path"] / name) for name in ("model.keras", "predictions.csv", "ood.json"))


def predictor(run: dict) -> Predictor:
    """The run's model, loaded once and shared by every session."""
    return _predictor(str(run["path"]), model_stamp(run))


@st.cache_data(max_entries=32, show_spinner=False)  # a Prediction holds the decoded scan
def _predict(run_path: str, model_stamp: float, content: bytes, name: str) -> Prediction:
    return _predictor(run_path, model_stamp).predict_images([read_image(content, name)], [name])[0]


def upload_name(name: str) -> str:
    """An uploaded file's name as shown and offered back: its last path part,
    without control characters, with Markdown's special characters escaped,
    so a crafted name can neither point at a path nor inject links or images."""
    base = re.split(r"[\\/]", name)[-1]
    base = "".join(ch for ch in base if ch.isprintable()) or "upload"
    return re.sub(r"([\\`*_{}\[\]()<>#+!|~-])", r"\\\1", base)


def predict_upload(run: dict, name: str, content: bytes) -> Prediction:
    """Probability and decision for one uploaded file. A file that is not a
    readable image raises core.data.limits.ImageReadError (a ValueError) whose message
    starts with its name."""
    return _predict(str(run["path"]), model_stamp(run), content, name)


@st.cache_data(max_entries=512, show_spinner=False)
def _heatmap(run_path: str, model_stamp: float, source: str | bytes, name: str,
             stamp: float, method: str, class_index: int = 1) -> np.ndarray:
    image = read_image(source, name, stamp)
    return _predictor(run_path, model_stamp).gradcam(image, method, class_index)


def gradcam_overlay(run: dict, source: str | bytes, name: str, method: str = "gradcam",
                    opacity: float = 0.4, class_index: int = 1) -> np.ndarray:
    """The scan (a path or uploaded bytes) with its Grad-CAM (or Grad-CAM++)
    heatmap of evidence for class_index (1: positive) blended over it. The
    heatmap is cached per run, image, method and class (about a second on
    CPU), so changing the opacity costs only the blend."""
    stamp = 0.0 if isinstance(source, bytes) else mtime(source)
    source = source if isinstance(source, bytes) else str(source)
    heatmap = _heatmap(str(run["path"]), model_stamp(run), source, name, stamp, method, class_index)
    return overlay(predictor(run).view(read_image(source, name, stamp)), heatmap, alpha=opacity)


def heatmap_colour_bar(class_name: str) -> None:
    """The heatmaps' colour scale and what it means. Each map is scaled on its
    own scan (tf-keras-vis normalises it): colours say where the evidence for
    the class is, not how strong it is; the probability says that."""
    st.image(colour_bar(), width=480,
             caption=f"Heatmap colours: blue = no evidence for {class_name}, red = the strongest evidence "
                     f"for {class_name} in this scan. Each map is scaled to its own scan, so red marks where "
                     "the model found the evidence, not how much there was; a map that stays blue found none.")


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------
# Charts
# ---------------------------------------------------------------------------

def history_figure(frame: pd.DataFrame) -> go.Figure:
    """Loss and ROC-AUC per epoch, training vs validation, with a line where
    fine-tuning starts (history.csv restarts its epoch count at each phase)."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "ROC-AUC"))
    x = np.arange(1, len(frame) + 1)
    for column, metric in enumerate(("loss", "auc"), start=1):
        for prefix, name, color in (("", "train", TRAIN_COLOR), ("val_", "validation", VAL_COLOR)):
            if prefix + metric in frame:
                figure.add_scatter(x=x, y=frame[prefix + metric], name=name, mode="lines+markers",
                                   line_color=color, legendgroup=name, showlegend=column == 1,
                                   row=1, col=column)
    if "epoch" in frame and len(frame) > 1:
        for start in np.flatnonzero(frame["epoch"].diff() <= 0):
            figure.add_vline(x=start + 0.5, line_dash="dot", line_color="gray")
            figure.add_annotation(x=start + 0.5, y=1.08, yref="paper", text="fine-tuning",
                                  showarrow=False, font_color="gray")
    figure.update_xaxes(title_text="epoch (both phases)", dtick=1 if len(frame) <= 20 else None)
    figure.update_layout(height=320, margin=dict(t=50, b=10, l=10, r=10),
                         legend=dict(orientation="h", y=-0.3))
    return figure
