"""Predict: upload CT slices (PNG, JPEG or DICOM) and get, from the deployed
model (core.inference.deploy), the calibrated probability of COVID-19, the decision at
its threshold (borderline when too close to call), and Grad-CAM and
Grad-CAM++ maps of the evidence for that decision to download. A scan unlike
the training scans (core.inference.ood) gets no prediction unless the user asks. A file
that cannot be read gets an error naming it; the other uploads are still
processed. A whole scan (several DICOM files of a series, a zip, a NIfTI
volume, or slices ticked as one scan) gets one decision (scan_ui)."""
from functools import partial
from pathlib import Path

import streamlit as st

import scan_ui
import ui
from core.inference import deploy
from core.inference import external
from core.runs import catalogue
from core.data.scans import group_uploads
from core.inference.calibration import percent
from core.inference.ood import REFUSAL

ui.page_setup("Predict")
st.warning(ui.DISCLAIMER, icon=":material/warning:")
run = deploy.deployed_run()
if run is None:
    st.info("No model is deployed yet: one run must be chosen on purpose to answer here "
            "(Evaluate: *Use this model for predictions*, or `python -m core deploy RUN`).",
            icon=":material/info:")
    best = deploy.best_run(catalogue.list_runs())
    if best is None:
        st.markdown("No completed run is fit to deploy (completed on the full data, above the quality floor: "
                    f"{deploy.FLOOR}). Train one, or review runs on Evaluate.")
        st.page_link(ui.EVALUATE, label="Go to Evaluate", icon=ui.icon(ui.EVALUATE))
        st.stop()
    st.markdown(f"The best completed run by validation ROC-AUC is **{ui.run_label(best)}**.")
    ui.deploy_controls(best, key="predict_best")
    st.stop()

# --- Which model answers -----------------------------------------------------------
negative, positive = ui.class_names(run)
record = deploy.deployed_record() or {}
calibration = ui.run_calibration(run)
test = deploy.test_figures(run)
with st.container(border=True):
    trained = str(run["status"].get("updated_at", "?"))[:16].replace("T", " ")
    st.markdown(f"**Model answering:** {ui.run_label(run)} · trained {trained} UTC · "
                f"deployed {str(record.get('deployed_at', '?'))[:16].replace('T', ' ')} UTC")
    if test:
        low, high = (test.get("ci") or {}).get("roc_auc", [None, None])
        st.caption(f"Test split ({test.get('n')} scans): ROC-AUC {ui.fmt(test.get('roc_auc'))} "
                   f"(95% CI {ui.fmt(low)}–{ui.fmt(high)}), sensitivity {ui.fmt(test.get('recall'))}, "
                   f"specificity {ui.fmt(test.get('specificity'))} at its threshold.")
    external_sets = [found["metrics"] for found in ui.external_sets(run) if found["state"] == "completed"]
    if external_sets:  # how the model did on scans from sources it never saw
        st.caption("External validation: " + "; ".join(external.summary_line(m) for m in external_sets) + ".")
    else:
        st.caption("External validation: none yet. A model checked only on its own test split can do far worse "
                   "on another hospital's scans; evaluate it on one from the Evaluate page.")
    low, high = calibration.borderline
    calibrated = (f"calibrated on the validation split ({calibration.method} scaling)" if calibration.method != "none"
                  else f"the model's own, not calibrated ({calibration.note})")
    st.caption(f"Probabilities are {calibrated}; the decision threshold is {percent(calibration.threshold)} on "
               "that scale. *Borderline*: between "
               f"{percent(low)} and {percent(high)}, where the threshold itself would have landed on 90% of "
               "resamples of the validation split.")
    if record.get("confirmed_despite"):
        st.warning("Deployed despite: " + "; ".join(record["confirmed_despite"]) + ".", icon=":material/warning:")

uploads = st.file_uploader("CT slices (PNG, JPEG or DICOM, one or several), or a whole scan: the DICOM files of "
                           "a series, a .zip of them, or a NIfTI volume (.nii, .nii.gz)",
                           type=ui.UPLOAD_TYPES + scan_ui.SCAN_TYPES, accept_multiple_files=True, key="uploads")
one_scan = st.checkbox("These slices are one scan (one patient)", key="one_scan",
                       help="Ticked: PNG or JPEG slices uploaded together get one decision, as a series does.")
st.caption("Several DICOM files are read as one series, and a .zip or NIfTI file as one scan: one decision "
           "for the patient, from the slices that show lung. PNG and JPEG slices are predicted one by one "
           "unless ticked above.")
opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="opacity", persist_state="session")
if not uploads:
    st.info("Upload one or more CT slices, or a whole scan, to get a prediction.")
    st.stop()

scans, singles = group_uploads([(upload.name, upload.getvalue()) for upload in uploads], one_scan)
for scan_name, files in scans:
    scan_ui.show_scan(run, scan_name, files, opacity)

for i, (file_name, content) in enumerate(singles):
    name = ui.upload_name(file_name)
    with st.container(border=True):
        try:
            prediction = ui.predict_upload(run, name, content)
        except ValueError as error:  # ImageReadError: its message starts with the file name
            st.error(f"Cannot use this file: {error}")
            continue
        st.markdown(f"#### {name}")
        if prediction.refused:
            st.warning(f"{REFUSAL.capitalize()}: " + "; ".join(prediction.ood_problems) + ".",
                       icon=":material/block:")
            if not st.checkbox("Show the model's answer anyway", key=f"show_anyway_{i}"):
                st.image(prediction.image, caption="scan", width=320)
                continue
        details, scan, gradcam, gradcam_pp = st.columns([1.2, 2, 2, 2])
        details.metric(f"Probability of {positive}", percent(prediction.probability))
        color = "red" if prediction.label == positive else "blue"
        details.markdown(f"Decision: :{color}-badge[{prediction.label}]"
                         + (" :orange-badge[borderline]" if prediction.borderline else "")
                         + f"  \nat the threshold {percent(prediction.threshold)}")
        details.caption(f"{prediction.image.shape[1]} × {prediction.image.shape[0]} px, "
                        f"resized to {ui.predictor(run).input_size} px for the model.")
        scan.image(prediction.image, caption="scan", width="stretch")
        for column, method in ((gradcam, "gradcam"), (gradcam_pp, "gradcam++")):
            with column, st.spinner(f"{ui.CAM_METHODS[method]}…"):
                image = ui.gradcam_overlay(run, content, name, method, opacity,
                                           class_index=prediction.class_index)
                st.image(image, caption=ui.CAM_METHODS[method], width="stretch")
                # The PNG is encoded on click (0.1 s for a large scan), not on every run.
                st.download_button(f"Download {ui.CAM_METHODS[method]} PNG", partial(ui.png_bytes, image),
                                   file_name=f"{Path(file_name.replace(chr(92), '/')).stem}-{method}.png",
                                   mime="image/png", key=f"download_{i}_{method}",
                                   on_click="ignore")
        ui.heatmap_colour_bar(prediction.label)
