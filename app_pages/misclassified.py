"""Misclassified: the images a run got wrong at the chosen threshold, most
confident mistakes first, each next to its Grad-CAM. Run, threshold and cell
are shared with Evaluate (session state), so a click there lands here."""
import pandas as pd
import streamlit as st

from core.evaluation import tables
from core.inference.calibration import percent
from ui.cache_keys import mtime
from ui.dataset_cache import read_image
from ui.external import review_predictions, review_sets
from ui.model import CAM_METHODS, evidence_note, gradcam_overlay, lung_outline_toggle
from ui.runs import CELLS, class_names, pick_run, threshold_slider

PER_PAGE = 4  # Grad-CAM is slow on CPU: a few images per page


def choices(sets: dict[str, str]) -> tuple[str, str, str]:
    """The cell, the set of cases and the heatmap method, kept for the session.
    Defaults go through session state, since Evaluate sets "cell" and
    "review_split" before opening this page."""
    for key, default in (("cell", "fp"), ("review_split", "test"), ("cam_method", "gradcam")):
        st.session_state.setdefault(key, default)
    if st.session_state["review_split"] not in sets:
        st.session_state["review_split"] = "test"
    # Three controls in one row cut "True negatives" and "Grad-CAM++" off at 1280 px: the cells
    # get a row of their own.
    cell = st.segmented_control("Show", list(CELLS), format_func=CELLS.get, required=True,
                                  key="cell", persist_state="session")
    middle, right = st.columns(2)
    split = middle.selectbox("Cases from", list(sets), format_func=sets.get, key="review_split",
                             persist_state="session")
    method = right.segmented_control("Heatmap", list(CAM_METHODS), format_func=CAM_METHODS.get,
                                     required=True, key="cam_method", persist_state="session")
    return cell, split, method


def case(run: dict, row: pd.Series, method: str, classes: tuple[str, str]) -> None:
    """One case: the scan, its heatmap, its probability and true class."""
    negative, positive = classes
    path = row["file"]
    with st.container(border=True):
        scan, heatmap, details = st.columns([2, 2, 1])
        try:
            # Stretched to the column, so small and large scans are compared at one size.
            scan.image(read_image(path, row["path"], mtime(path)), caption="scan", width="stretch")
            with heatmap, st.spinner(f"{CAM_METHODS[method]}…"):
                heatmap.image(gradcam_overlay(run, path, row["path"], method,
                                              outline=st.session_state.get("lung_outline", False)),
                              caption=CAM_METHODS[method], width="stretch")
                note = evidence_note(run, path, row["path"], method)
                if note:
                    heatmap.warning(note, icon=":material/info:")
        except ValueError as error:  # the image moved or cannot be read any more
            scan.error(str(error))
        details.markdown(f"**{row['path']}**")
        details.metric(f"P({positive})", percent(row["prob"]),
                       help="Calibrated with the run's own calibration, fitted on its validation split: the "
                            "probability Predict gives this slice without a site, on the threshold's scale.")
        details.caption(f"true class: {positive if row['y_true'] else negative}  \n"
                        f"confidence in the prediction: {percent(row['confidence'])}")


def cases(run: dict, threshold: float) -> None:
    """The cases of the chosen cell, most confident first, a page at a time."""
    negative, positive = classes = class_names(run)
    sets = review_sets(run)  # test, val and the run's external sets
    cell, split, method = choices(sets)
    lung_outline_toggle()
    rows = tables.cell_rows(review_predictions(run, split), threshold, cell)
    what = {"fp": f"{negative} predicted as {positive}", "fn": f"{positive} predicted as {negative}",
            "tp": f"{positive} predicted as {positive}", "tn": f"{negative} predicted as {negative}"}[cell]
    st.caption(f"{len(rows)} {CELLS[cell].lower()} in {sets[split]} at threshold "
               f"{threshold:.3f} ({what}), most confident first. The heatmap shows the regions "
               f"that raised the probability of {positive}.")
    if rows.empty:
        st.success(f"No {CELLS[cell].lower()} at this threshold.")
        return
    page = st.pagination(-(-len(rows) // PER_PAGE), key=f"page_{run['id']}_{split}_{cell}")
    for _, row in rows.iloc[(page - 1) * PER_PAGE:page * PER_PAGE].iterrows():
        case(run, row, method, classes)


run = pick_run()
cases(run, threshold_slider(run))
