"""Predict: upload CT slices (PNG, JPEG or DICOM) and get, from the deployed
model (core.inference.deploy), the calibrated probability of COVID-19, the decision at
its threshold (borderline when too close to call), and Grad-CAM and
Grad-CAM++ maps of the evidence for that decision to download. A scan unlike
the training scans (core.inference.ood) gets no prediction unless the user asks. A file
that cannot be read gets an error naming it; the other uploads are still
processed. A whole scan (several DICOM files of a series, a zip, a NIfTI
volume, or slices ticked as one scan) gets one decision (ui.scans)."""
from functools import partial
from pathlib import Path

import streamlit as st

from core.data.scans import group_uploads, one_scan_offer
from core.inference import deploy
from core.inference.calibration import percent
from core.inference.ood import REFUSAL
from ui import frame, pacs, records, scans
from ui.deployment import deployed_model_card, nothing_deployed
from ui.formatting import upload_name
from ui.glossary import explain
from ui.model import (CAM_METHODS, UPLOAD_TYPES, evidence_note, gradcam_overlay, heatmap_colour_bar,
                      lung_outline_toggle, predict_upload, predictor)
from ui.runs import class_names
from ui.sites import calibration_words, site_choice, uploads_check


def upload_controls():
    """The uploader and how to read the uploads; returns (uploads, one_scan, opacity)."""
    uploads = st.file_uploader("CT slices (PNG, JPEG or DICOM, one or several), or a whole scan: the DICOM files "
                               "of a series, a .zip of them, or a NIfTI volume (.nii, .nii.gz)",
                               type=UPLOAD_TYPES + scans.SCAN_TYPES, accept_multiple_files=True, key="uploads")
    one_scan = st.checkbox("These slices are one scan (one patient)", key="one_scan",
                           help="Ticked: PNG or JPEG slices uploaded together get one decision, as a series does.")
    st.caption("Several DICOM files are read as one series, and a .zip or NIfTI file as one scan: one decision "
               "for the patient, from the slices that show lung. PNG and JPEG slices are predicted one by one "
               "unless ticked above.")
    opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="opacity", persist_state="session")
    lung_outline_toggle()
    records.keep_images_toggle()
    return uploads, one_scan, opacity


def single_slice(run: dict, i: int, file_name: str, content: bytes, opacity: float, site: str | None) -> None:
    """One uploaded slice: its probability and decision, the scan, and both heatmaps to download;
    a slice unlike the training scans only when asked for."""
    name = upload_name(file_name)
    with st.container(border=True):
        try:
            prediction = predict_upload(run, name, content, site)
        except ValueError as error:  # ImageReadError: its message starts with the file name
            st.error(f"Cannot use this file: {error}")
            if "transfer syntax" in str(error):
                st.caption("What is a transfer syntax?", help=explain("Transfer syntax"))
            return
        st.markdown(f"#### {name}")
        record = records.slice_case(run, file_name, content, prediction)  # logged once per session
        if prediction.refused:
            st.warning(f"{REFUSAL.capitalize()}: " + "; ".join(prediction.ood_problems) + ".",
                       icon=":material/block:")
            st.caption("How are unfamiliar images recognised?", help=explain("Unfamiliar image check"))
            if not st.checkbox("Show the model's answer anyway", key=f"show_anyway_{i}"):
                st.image(prediction.image, caption="scan", width=320)
                return
        details, scan, *heatmaps = st.columns([1.8, 2, 2, 2])  # 1.8: the probability's label fits at 1280 px
        decision(run, details, prediction)
        scan.image(prediction.image, caption="scan", width="stretch")
        for column, method in zip(heatmaps, CAM_METHODS):
            with column, st.spinner(f"{CAM_METHODS[method]}…"):
                heatmap(run, i, file_name, name, content, method, opacity, prediction.class_index, record,
                        valid=not prediction.refused)
        heatmap_colour_bar(prediction.label)
        if not prediction.refused:  # a refused slice shown anyway is no answer to report or correct
            records.answer_controls(run, record, prediction.image, key=f"slice_{i}", overlay=partial(
                gradcam_overlay, run, content, name, "gradcam", opacity, class_index=prediction.class_index))


def decision(run: dict, column, prediction) -> None:
    """The probability, the decision (borderline when too close to call) and the input size;
    for a refused slice shown anyway, the model's answer greyed, with no decision badge."""
    positive = class_names(run)[1]
    if prediction.refused:
        column.markdown(f":gray[The model's answer, **not a valid prediction**: {prediction.label}, "
                        f"{percent(prediction.probability)}, for an image unlike the training slices.]")
        return
    column.metric(f"Probability of {positive}", percent(prediction.probability),
                  help="Calibrated probability: " + calibration_words(prediction.site) + ".")
    color = "red" if prediction.label == positive else "blue"
    column.markdown(f"Decision: :{color}-badge[{prediction.label}]"
                    + (" :orange-badge[borderline]" if prediction.borderline else "")
                    + f"  \nat the threshold {percent(prediction.threshold)}, {calibration_words(prediction.site)}")
    column.caption(f"{prediction.image.shape[1]} × {prediction.image.shape[0]} px, "
                   f"resized to {predictor(run).input_size} px for the model.")


def heatmap(run: dict, i: int, file_name: str, name: str, content: bytes, method: str, opacity: float,
            class_index: int, record: dict | None, valid: bool = True) -> None:
    """One heatmap overlay and its download, which carries the answer (the PNG is encoded on click);
    the heatmap of a refused slice shown anyway is labelled as no valid prediction, file name too."""
    image = gradcam_overlay(run, content, name, method, opacity, class_index=class_index,
                            outline=st.session_state.get("lung_outline", False))
    st.image(image, caption=CAM_METHODS[method], width="stretch")
    note = evidence_note(run, content, name, method, class_index)
    if note:
        st.warning(note, icon=":material/info:")
    labelled = partial(records.labelled_png, image, record, CAM_METHODS[method])  # the answer written under it
    invalid = "" if valid else " (not a valid prediction)"
    st.download_button(f"Download {CAM_METHODS[method]} PNG{invalid}", labelled,
                       file_name=f"{Path(file_name.replace(chr(92), '/')).stem}-{method}"
                                 f"{'' if valid else '-not-a-valid-prediction'}.png",
                       mime="image/png", key=f"download_{i}_{method}", on_click="ignore")


frame.disclaimer_banner()
run = deploy.deployed_run()
if run is None:
    nothing_deployed()
    st.stop()
deployed_model_card(run)
site = site_choice(run)
upload_tab, pacs_tab = st.tabs(["Upload", "From PACS"])
with pacs_tab:
    pacs.pacs_tab(run, st.session_state.get("opacity", 0.4), site)
with upload_tab:
    uploads, one_scan, opacity = upload_controls()
    if not uploads:
        st.info("Upload one or more CT slices, or a whole scan, to get a prediction.")
        records.case_log_expander()  # earlier answers, of this session or any other: they survive a reload
        st.stop()
    whole_scans, singles = group_uploads([(upload.name, upload.getvalue()) for upload in uploads], one_scan)
    scans.offer_one_scan(one_scan_offer(singles))
    for scan_name, files in whole_scans:
        scans.show_scan(run, scan_name, files, opacity, site)
    for i, (file_name, content) in enumerate(singles):
        single_slice(run, i, file_name, content, opacity, site)
    uploads_check(run, site, whole_scans, singles)
    # The answers are drawn under the uploader, often below the window's edge: say once that they came.
    answered = tuple(upload.file_id for upload in uploads)
    if st.session_state.get("answered_uploads") != answered:
        st.session_state["answered_uploads"] = answered
        st.toast(f"The answer for {len(uploads)} upload(s) is below the uploader.", icon=":material/arrow_downward:")
    records.session_table()
    records.case_log_expander()
