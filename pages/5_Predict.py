"""Predict: upload CT slices (PNG, JPEG or DICOM) and get, for each, the
probability of COVID-19, the decision at the run's threshold, and Grad-CAM
and Grad-CAM++ overlays to download. A file that cannot be read gets an
error naming it; the other uploads are still processed."""
from functools import partial
from pathlib import Path

import streamlit as st

import ui

ui.page_setup("Predict")
st.warning(ui.DISCLAIMER, icon=":material/warning:")
run = ui.pick_run(needs_test_results=False)
negative, positive = ui.class_names(run)

uploads = st.file_uploader("CT slices: PNG, JPEG or DICOM (one or several)", type=ui.UPLOAD_TYPES,
                           accept_multiple_files=True, key="uploads")
opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="opacity", persist_state="session")
if not uploads:
    st.info("Upload one or more CT slices to get a prediction.")
    st.stop()
st.caption(f"The heatmaps show the regions that raised the probability of {positive} (red: most); "
           "a uniformly blue map means no region did.")

for i, upload in enumerate(uploads):
    name = ui.upload_name(upload.name)
    with st.container(border=True):
        try:
            prediction = ui.predict_upload(run, name, upload.getvalue())
        except ValueError as error:  # ImageReadError: its message starts with the file name
            st.error(f"Cannot use this file: {error}")
            continue
        st.markdown(f"#### {name}")
        details, scan, gradcam, gradcam_pp = st.columns([1.2, 2, 2, 2])
        details.metric(f"Probability of {positive}", f"{prediction.probability:.1%}")
        color = "red" if prediction.label == positive else "blue"
        details.markdown(f"Decision: :{color}-badge[{prediction.label}]  \n"
                         f"at the run's threshold {prediction.threshold:.3f}")
        details.caption(f"{prediction.image.shape[1]} × {prediction.image.shape[0]} px, "
                        f"resized to {ui.predictor(run).input_size} px for the model.")
        scan.image(prediction.image, caption="scan", width="stretch")
        for column, method in ((gradcam, "gradcam"), (gradcam_pp, "gradcam++")):
            with column, st.spinner(f"{ui.CAM_METHODS[method]}…"):
                image = ui.gradcam_overlay(run, upload.getvalue(), name, method, opacity)
                st.image(image, caption=ui.CAM_METHODS[method], width="stretch")
                # The PNG is encoded on click (0.1 s for a large scan), not on every run.
                st.download_button(f"Download {ui.CAM_METHODS[method]} PNG", partial(ui.png_bytes, image),
                                   file_name=f"{Path(upload.name.replace(chr(92), '/')).stem}-{method}.png",
                                   mime="image/png", key=f"download_{i}_{method}",
                                   on_click="ignore")
