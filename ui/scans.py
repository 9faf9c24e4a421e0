"""The Predict page's whole scans: cached reading and scoring of an uploaded
scan (core.data.dicom_study, core.data.scans, core.inference.scan_decision),
and its card: the series of a DICOM study with the lung series preselected,
the scan's decision beside the DICOM header summary, the per-slice
probability curve (ui.charts), and a slice scroller with each slice's
Grad-CAM overlay (ui.model).

A scored scan holds every decoded slice of the series: it is a
resource (st.cache_resource, returned as is, never copied), keyed by the
run, its model and a digest of the uploaded files.
"""
from __future__ import annotations

import hashlib
import json
from functools import partial

import streamlit as st

from core.data import dicom_header, dicom_study
from core.evaluation import patient_level
from core.inference import scan_decision, site_store
from core.inference.calibration import percent
from core.inference.scan_decision import ScanResult
from ui import charts, records
from ui.formatting import plain, upload_name
from ui.model import model_stamp, predictor, site_stamp, slice_overlay
from ui.runs import class_names

SCAN_TYPES = ["zip", "nii", "gz"]  # a .nii.gz ends in .gz: Streamlit checks the end of the name


def files_key(files: list[tuple[str, bytes]]) -> str:
    """A digest of the files' names and contents: the cache key of one uploaded scan."""
    digest = hashlib.sha256()
    for name, content in files:
        digest.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
    return digest.hexdigest()


@st.cache_data(max_entries=8, show_spinner=False)
def _settings(run_path: str, stamp: float, site: str | None = None, profile_stamp: float = 0.0) -> dict:
    return site_store.scan_settings(run_path, site) if site else scan_decision.settings_for_run(run_path)


def settings(run: dict, site: str | None = None) -> dict:
    """The run's scan aggregation and threshold (RUN/scan.json, chosen on its
    validation patients), or with `site` those of the site's profile."""
    return _settings(str(run["path"]), model_stamp(run), site, site_stamp(run, site))


@st.cache_resource(max_entries=4, show_spinner=False)
def _scored(run_path: str, stamp: float, key: str, name: str, series: str | None, settings_text: str,
            _files: tuple, _predictor) -> ScanResult:
    scan = dicom_study.read_upload(list(_files), name, series)[0]
    return scan_decision.score_scan(_predictor, scan, json.loads(settings_text))


def score_upload(run: dict, name: str, files: list[tuple[str, bytes]], site: str | None = None,
                 series: str | None = None) -> ScanResult:
    """The uploaded scan read and scored (of a DICOM study, the series whose
    UID is `series`, by default the preselected one); ImageReadError (a
    ValueError) names a bad file. Scored again when the run's scan settings
    change (a fallback replaced by a choice)."""
    return _scored(str(run["path"]), model_stamp(run), files_key(files), name, series,
                   json.dumps(settings(run, site), sort_keys=True), tuple(files), predictor(run, site))


@st.cache_resource(max_entries=8, show_spinner=False)
def _study(key: str, name: str, _files: tuple) -> dicom_study.Study:
    study = dicom_study.open_files(list(_files), name)
    if study.archive is not None:  # the listing keeps headers only; reading opens the zip again
        study.archive.close()
    return study


def study_of(name: str, files: list[tuple[str, bytes]]) -> dicom_study.Study:
    """The DICOM series among the uploaded files, from their headers (none for other scans)."""
    return _study(files_key(files), name, tuple(files))


def offer_one_scan(offer: str | None) -> None:
    """core.data.scans.one_scan_offer's words, with a button that ticks Predict's
    "one scan" box (a callback: a widget's value is set before it is drawn)."""
    if not offer:
        return
    st.info(offer, icon=":material/stacks:")
    st.button("Read them as one scan", icon=":material/stacks:", key="offer_one_scan",
              on_click=lambda: st.session_state.update({"one_scan": True}))


def show_scan(run: dict, name: str, files: list[tuple[str, bytes]], opacity: float, site: str | None = None) -> None:
    """One uploaded scan: of a study, its series to choose from; its probability
    and decision beside the DICOM header summary, the per-slice curve, and a
    slice scroller with the Grad-CAM overlay, the most suspicious slice first."""
    shown_name, key = upload_name(name), files_key(files)[:16]
    with st.container(border=True):
        st.markdown(f"#### {shown_name}")
        try:
            with st.spinner(f"Reading and scoring {shown_name}…"):
                study = study_of(name, files)
                chosen = series_choice(study, key)
                if study.series and chosen is None:
                    return
                result = score_upload(run, name, files, site, None if chosen is None else chosen.uid)
        except ValueError as error:  # ImageReadError: its message names the file
            st.error(f"Cannot use this scan: {plain(str(error))}")
            return
        answer, header = st.columns([3, 2]) if chosen is not None else (st.container(), None)
        with answer:
            _decision(result, predictor(run, site).calibration.threshold)
        if header is not None:
            with header:
                header_summary(chosen, key)
        record = records.scan_case(run, name, files, result)  # logged once per session
        top = result.most_suspicious
        count = len(result.scan.slices)
        index = (st.slider("Slice", 1, count, (top or 0) + 1, key=f"slice_{key}",
                           help="Starts at the most suspicious slice.") if count > 1 else 1) - 1
        st.plotly_chart(charts.scan_probability_curve(result, index), key=f"curve_{key}")
        _slice(run, result, key, index, opacity)
        _report(run, result, record, key, opacity)


def _report(run: dict, result: ScanResult, record: dict | None, key: str, opacity: float) -> None:
    """The scan's report shows its most suspicious slice (the first when none was scored) and its Grad-CAM."""
    top = result.most_suspicious
    index = top if top is not None else 0
    overlay = None if top is None else partial(slice_overlay, run, result, key, top, "gradcam", opacity,
                                               int(result.decision == result.positive_class))
    records.answer_controls(run, record, result.scan.rgb(index), overlay, key=f"scan_{key}",
                            image_caption=f"slice {index + 1} (most suspicious)" if top is not None else "slice 1",
                            overlay_caption="Grad-CAM: evidence for the scan's decision")


def series_choice(study: dicom_study.Study, key: str) -> dicom_study.Series | None:
    """The series to read: a study's only one, or, of several, the table of
    them and a choice that starts at the series preselected for the lungs
    (core.data.dicom_study.lung_suitability); None when there is no DICOM series."""
    if len(study.series) <= 1:
        return study.series[0] if study.series else None
    st.caption(f"This upload holds a DICOM study of {len(study.series)} series; the axial series best suited "
               "to the lungs (thin, lung kernel) is preselected.")
    st.dataframe([{"series": s.index, "description": s.description, "kernel": s.kernel,
                   "thickness (mm)": s.thickness, "orientation": s.orientation, "images": s.images,
                   "preselected": s is study.preselected} for s in study.series],
                 hide_index=True, key=f"series_table_{key}")
    by_index = {s.index: s for s in study.series}
    chosen = st.selectbox("Series to read", list(by_index), key=f"series_{key}",
                          index=None if study.preselected is None else study.preselected.index - 1,
                          format_func=lambda i: f"{i}: {dicom_header.series_label(by_index[i])}"
                                                + (" (preselected)" if by_index[i] is study.preselected else ""),
                          placeholder="Choose a series: none is an axial CT series to preselect")
    return None if chosen is None else by_index[chosen]


def header_summary(series: dicom_study.Series, key: str) -> None:
    """What the DICOM headers say about the series read; patient identifiers only when asked."""
    st.markdown("**DICOM header**")
    with_identifiers = st.toggle("Show patient identifiers", value=False, key=f"identifiers_{key}",
                                 help="Name, ID, birth date, accession number and UIDs stay hidden until asked.")
    summary = dicom_header.header_summary(series, with_identifiers)
    st.dataframe([{"field": field.replace("_", " "), "value": "" if value is None else str(value)}
                  for field, value in summary.items()], hide_index=True, key=f"header_{key}")


def _decision(result: ScanResult, slice_threshold: float) -> None:
    """How many slices were read, scored and counted; the scan's decision; its caveats and notes."""
    st.caption(f"{result.scan.kind}: {len(result.scan.slices)} slices read, {len(result.scored)} scored "
               f"(showing lung), {len(result.counted)} counted.")
    if result.scan_probability is None:
        st.warning("No scored slice is like the training scans: no prediction for this scan.",
                   icon=":material/block:")
    else:
        _probability(result, slice_threshold)
    if result.settings.get("caveat"):
        st.warning(plain(result.settings["caveat"].capitalize()) + ".", icon=":material/warning:")
    if result.notes:
        st.info("\n".join(f"- {plain(note)}" for note in result.notes), icon=":material/info:")


def _probability(result: ScanResult, slice_threshold: float) -> None:
    """The scan's probability and decision at the scan threshold, how that threshold was chosen,
    and why it is not the slice threshold."""
    chosen = result.settings
    left, right = st.columns([1, 3])
    left.metric(f"Scan probability of {result.positive_class}", percent(result.scan_probability))
    color = "red" if result.decision == result.positive_class else "blue"
    right.markdown(f"Decision: :{color}-badge[{result.decision}] at the scan threshold "
                   f"{percent(chosen['threshold'])}"
                   + (" — :orange-badge[borderline: too close to call]" if result.borderline else ""))
    if chosen.get("site"):  # a site profile's scan threshold (core.inference.site_store.scan_settings)
        how = f"its threshold chosen on {chosen['chosen_on']} (calibrated for site {chosen['site']})"
    else:
        how = (f"chosen with its threshold on {chosen['val_patients']} validation patients "
               f"({chosen['val_multi_slice_patients']} with several slices)" if not chosen.get("caveat") else
               "the fallback")
    right.caption(f"Scan probability: {patient_level.AGGREGATIONS[chosen['aggregation']]}, {how}. Slice and "
                  "scan probabilities are on the same calibrated scale; the scan threshold "
                  f"({percent(chosen['threshold'])}) is chosen for whole scans' probabilities, so it can differ "
                  f"from the threshold a single slice is decided at ({percent(slice_threshold)}). "
                  "A research figure, not a diagnosis.")


def _slice(run: dict, result: ScanResult, key: str, index: int, opacity: float) -> None:
    """The slice shown and, when it was scored, its Grad-CAM of evidence for the scan's decision."""
    image_column, cam_column = st.columns(2)
    name = upload_name(result.scan.slice_names[index])
    lung = f"lung {result.lung_fraction[index]:.0%} of the slice"
    if index in result.probability:
        image_column.image(result.scan.rgb(index), width="stretch",
                           caption=f"slice {index + 1}: {name}, P {percent(result.probability[index])}, {lung}")
        class_index = int(result.decision == result.positive_class)
        with cam_column, st.spinner("Grad-CAM…"):
            cam_column.image(slice_overlay(run, result, key, index, "gradcam", opacity, class_index),
                             width="stretch", caption=f"Grad-CAM: evidence for {class_names(run)[class_index]}")
        if result.refusals[index]:
            image_column.caption("Not like the training scans (left out of the scan's probability): "
                                 + "; ".join(result.refusals[index]))
    else:
        image_column.image(result.scan.rgb(index), width="stretch",
                           caption=f"slice {index + 1}: {name}, not scored ({lung})")
