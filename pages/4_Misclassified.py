"""Misclassified: the images a run got wrong at the chosen threshold, most
confident mistakes first, each next to its Grad-CAM. Run, threshold and cell
are shared with Evaluate (session state), so a click there lands here."""
import streamlit as st

import ui
from core.evaluation import tables
from core.inference.calibration import percent

PER_PAGE = 4  # Grad-CAM costs about a second per image on CPU

ui.page_setup("Misclassified")
run = ui.pick_run()
negative, positive = ui.class_names(run)
threshold = ui.threshold_slider(run)

# Defaults through session state, since Evaluate sets "cell" and "review_split" before opening this page.
for key, default in (("cell", "fp"), ("review_split", "test"), ("cam_method", "gradcam")):
    st.session_state.setdefault(key, default)
sets = ui.review_sets(run)  # test, val and the run's external sets
if st.session_state["review_split"] not in sets:
    st.session_state["review_split"] = "test"
left, middle, right = st.columns([3, 1.4, 1.3])
cell = left.segmented_control("Show", list(ui.CELLS), format_func=ui.CELLS.get, required=True,
                              key="cell", persist_state="session")
split = middle.selectbox("Cases from", list(sets), format_func=sets.get, key="review_split",
                         persist_state="session")
method = right.segmented_control("Heatmap", list(ui.CAM_METHODS), format_func=ui.CAM_METHODS.get,
                                 required=True, key="cam_method", persist_state="session")

rows = tables.cell_rows(ui.review_predictions(run, split), threshold, cell)
what = {"fp": f"{negative} predicted as {positive}", "fn": f"{positive} predicted as {negative}",
        "tp": f"{positive} predicted as {positive}", "tn": f"{negative} predicted as {negative}"}[cell]
st.caption(f"{len(rows)} {ui.CELLS[cell].lower()} in {sets[split]} at threshold "
           f"{threshold:.3f} ({what}), most confident first. The heatmap shows the regions "
           f"that raised the probability of {positive}.")
if rows.empty:
    st.success(f"No {ui.CELLS[cell].lower()} at this threshold.")
    st.stop()

n_pages = -(-len(rows) // PER_PAGE)
page = st.pagination(n_pages, key=f"page_{run['id']}_{split}_{cell}")
for _, row in rows.iloc[(page - 1) * PER_PAGE:page * PER_PAGE].iterrows():
    path = row["file"]
    with st.container(border=True):
        scan, heatmap, details = st.columns([2, 2, 1])
        try:
            # Stretched to the column, so small and large scans are compared at one size.
            scan.image(ui.read_image(path, row["path"], ui.mtime(path)), caption="scan",
                       width="stretch")
            with heatmap, st.spinner(f"{ui.CAM_METHODS[method]}…"):
                heatmap.image(ui.gradcam_overlay(run, path, row["path"], method),
                              caption=ui.CAM_METHODS[method], width="stretch")
        except ValueError as error:  # the image moved or cannot be read any more
            scan.error(str(error))
        details.markdown(f"**{row['path']}**")
        details.metric(f"P({positive})", percent(row["prob"]), help="Calibrated on the validation split.")
        details.caption(f"true class: {positive if row['y_true'] else negative}  \n"
                        f"confidence in the prediction: {percent(row['confidence'])}")
