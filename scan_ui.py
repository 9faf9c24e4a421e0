"""The Predict page's whole-scan pieces: cached reading and scoring of an
uploaded scan (core.data.scans, core.inference.scan_decision), the per-slice probability curve,
and a slice's Grad-CAM overlay. Kept apart from ui.py, which is long enough.

A scored scan holds every decoded slice (tens of MB for a series): it is a
resource (st.cache_resource, returned as is, never copied), keyed by the
run, its model and a digest of the uploaded files.
"""
from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import plotly.graph_objects as go
import streamlit as st

import ui
from core.data import scans
from core.evaluation import patient_level
from core.inference import scan_decision
from core.inference.calibration import percent
from core.inference.explain import overlay
from core.inference.scan_decision import ScanResult

SCAN_TYPES = ["zip", "nii", "gz"]  # a .nii.gz ends in .gz: Streamlit checks the end of the name
SCORED_COLOR, UNSCORED_COLOR, REFUSED_COLOR = "#e45756", "#888888", "#f2a93b"


def _plain(text: str) -> str:
    """Text that names uploaded files (zip members included, which the uploader chose), with
    Markdown's special characters escaped, so a crafted name cannot inject links or images."""
    return re.sub(r"([\\`*_{}\[\]()<>#+!|~-])", r"\\\1", "".join(ch for ch in text if ch.isprintable()))


def files_key(files: list[tuple[str, bytes]]) -> str:
    """A digest of the files' names and contents: the cache key of one uploaded scan."""
    digest = hashlib.sha256()
    for name, content in files:
        digest.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
    return digest.hexdigest()


@st.cache_data(max_entries=8, show_spinner=False)
def _settings(run_path: str, model_stamp: float) -> dict:
    return scan_decision.settings_for_run(run_path)


def settings(run: dict) -> dict:
    """The run's scan aggregation and threshold (RUN/scan.json, chosen on its validation patients)."""
    return _settings(str(run["path"]), ui.model_stamp(run))


@st.cache_resource(max_entries=4, show_spinner=False)
def _scored(run_path: str, model_stamp: float, key: str, name: str, settings_text: str, _files: tuple,
            _predictor) -> ScanResult:
    return scan_decision.score_scan(_predictor, scans.read_files(list(_files), name), json.loads(settings_text))


def score_upload(run: dict, name: str, files: list[tuple[str, bytes]]) -> ScanResult:
    """The uploaded scan read and scored; ImageReadError (a ValueError) names a bad file.
    Scored again when the run's scan settings change (a fallback replaced by a choice)."""
    return _scored(str(run["path"]), ui.model_stamp(run), files_key(files), name,
                   json.dumps(settings(run), sort_keys=True), tuple(files), ui.predictor(run))


@st.cache_data(max_entries=256, show_spinner=False)
def _slice_heatmap(run_path: str, model_stamp: float, key: str, index: int, method: str, class_index: int,
                   _predictor, _image: np.ndarray) -> np.ndarray:
    return _predictor.gradcam(_image, method, class_index)


def slice_overlay(run: dict, result: ScanResult, key: str, index: int, method: str, opacity: float,
                  class_index: int) -> np.ndarray:
    """Slice `index` (as the model sees it) with its Grad-CAM heatmap of evidence for
    class_index; the heatmap is cached, so moving the opacity costs only the blend."""
    image, predictor = result.scan.rgb(index), ui.predictor(run)
    heatmap = _slice_heatmap(str(run["path"]), ui.model_stamp(run), key, index, method, class_index,
                             predictor, image)
    return overlay(predictor.view(image), heatmap, alpha=opacity)


def probability_curve(result: ScanResult, shown: int) -> go.Figure:
    """P(positive) of each scored slice along the body axis (mm where the scan has
    positions, else the slice number); slices not scored are grey crosses at 0,
    slices the guard refused orange; the slice shown is marked."""
    positions = result.scan.positions
    x = np.asarray(positions if positions else np.arange(1, len(result.scan.slices) + 1), dtype=float)
    figure = go.Figure()
    counted = result.counted
    figure.add_scatter(x=x[counted], y=[result.probability[i] for i in counted], mode="lines+markers",
                       name="scored", line_color=SCORED_COLOR,
                       customdata=[[i + 1, result.lung_fraction[i]] for i in counted],
                       hovertemplate="slice %{customdata[0]}: P %{y:.2f}<br>lung %{customdata[1]:.0%}<extra></extra>")
    refused = [i for i in result.scored if result.refusals[i]]
    if refused:
        figure.add_scatter(x=x[refused], y=[result.probability[i] for i in refused], mode="markers",
                           name="not like the training scans (left out)", marker=dict(color=REFUSED_COLOR, size=9))
    unscored = sorted(set(range(len(result.scan.slices))) - set(result.scored))
    if unscored:
        figure.add_scatter(x=x[unscored], y=np.zeros(len(unscored)), mode="markers",
                           name=f"not scored (lung under {scan_decision.MIN_LUNG_AREA:.0%} of the slice, or "
                                f"within {scan_decision.MIN_SPACING_MM:g} mm of a scored slice)",
                           marker=dict(color=UNSCORED_COLOR, symbol="x", size=7),
                           customdata=[[i + 1, result.lung_fraction[i]] for i in unscored],
                           hovertemplate="slice %{customdata[0]}: not scored<br>lung %{customdata[1]:.0%}"
                                         "<extra></extra>")
    figure.add_vline(x=x[shown], line_dash="dot", line_color="gray")
    figure.update_layout(height=300, margin=dict(t=30, b=10, l=10, r=10), yaxis_range=[-0.05, 1.05],
                         xaxis_title="position along the body axis, feet → head (mm)" if positions
                         else "slice (file order)", yaxis_title=f"P({result.positive_class})",
                         legend=dict(orientation="h", y=-0.35), title="Probability per slice")
    return figure


def show_scan(run: dict, name: str, files: list[tuple[str, bytes]], opacity: float) -> None:
    """One uploaded scan: its probability and decision, the per-slice curve, and a
    slice scroller with the Grad-CAM overlay, the most suspicious slice first."""
    shown_name, key = ui.upload_name(name), files_key(files)[:16]
    with st.container(border=True):
        try:
            with st.spinner(f"Reading and scoring {shown_name}…"):
                result = score_upload(run, name, files)
        except ValueError as error:  # ImageReadError: its message names the file
            st.error(f"Cannot use this scan: {_plain(str(error))}")
            return
        st.markdown(f"#### {shown_name}")
        _decision(result)
        top = result.most_suspicious
        count = len(result.scan.slices)
        index = (st.slider("Slice", 1, count, (top or 0) + 1, key=f"slice_{key}",
                           help="Starts at the most suspicious slice.") if count > 1 else 1) - 1
        st.plotly_chart(probability_curve(result, index), key=f"curve_{key}")
        _slice(run, result, key, index, opacity)


def _decision(result: ScanResult) -> None:
    chosen = result.settings
    scored = len(result.scored)
    st.caption(f"{result.scan.kind}: {len(result.scan.slices)} slices read, {scored} scored (showing lung), "
               f"{len(result.counted)} counted.")
    probability = result.scan_probability
    if probability is None:
        st.warning("No scored slice is like the training scans: no prediction for this scan.",
                   icon=":material/block:")
    else:
        left, right = st.columns([1, 3])
        left.metric(f"Scan probability of {result.positive_class}", percent(probability))
        color = "red" if result.decision == result.positive_class else "blue"
        right.markdown(f"Decision: :{color}-badge[{result.decision}] at the scan threshold "
                       f"{percent(chosen['threshold'])}")
        how = (f"chosen with its threshold on {chosen['val_patients']} validation patients "
               f"({chosen['val_multi_slice_patients']} with several slices)" if not chosen.get("caveat") else
               "the fallback")
        right.caption(f"Scan probability: {patient_level.AGGREGATIONS[chosen['aggregation']]}, {how}. "
                      "A research figure, not a diagnosis.")
    if chosen.get("caveat"):
        st.warning(_plain(chosen["caveat"].capitalize()) + ".", icon=":material/warning:")
    if result.notes:
        st.info("\n".join(f"- {_plain(note)}" for note in result.notes), icon=":material/info:")


def _slice(run: dict, result: ScanResult, key: str, index: int, opacity: float) -> None:
    image_column, cam_column = st.columns(2)
    name = ui.upload_name(result.scan.slice_names[index])
    lung = f"lung {result.lung_fraction[index]:.0%} of the slice"
    if index in result.probability:
        image_column.image(result.scan.rgb(index), width="stretch",
                           caption=f"slice {index + 1}: {name}, P {percent(result.probability[index])}, {lung}")
        class_index = int(result.decision == result.positive_class)
        with cam_column, st.spinner("Grad-CAM…"):
            cam_column.image(slice_overlay(run, result, key, index, "gradcam", opacity, class_index),
                             width="stretch", caption=f"Grad-CAM: evidence for {ui.class_names(run)[class_index]}")
        if result.refusals[index]:
            image_column.caption("Not like the training scans (left out of the scan's probability): "
                                 + "; ".join(result.refusals[index]))
    else:
        image_column.image(result.scan.rgb(index), width="stretch",
                           caption=f"slice {index + 1}: {name}, not scored ({lung})")
