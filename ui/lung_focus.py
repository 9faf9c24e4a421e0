"""Evaluate's lung focus: how much of the run's Grad-CAM evidence lies in the
lung fields, read from the lung_focus.json the run stored
(core.inference.lung_focus), shown beside its test scores: a high ROC-AUC
whose evidence lies outside the lungs may be a shortcut."""
from __future__ import annotations

import streamlit as st

from core.inference import lung_focus

COMMAND = "python -m core lung-focus --run {run_id}"


def lung_focus_summary(run: dict) -> None:
    """The stored lung focus of the run's test split (Grad-CAM), or how to measure it."""
    st.subheader("Evidence in the lungs")
    try:
        stored = lung_focus.read(run["path"])
    except ValueError as error:  # a damaged file names itself
        st.warning(f"The stored lung focus cannot be read: {error}", icon=":material/warning:")
        return
    test = (stored or {}).get("test", {}).get("gradcam")
    if not test or not test.get("slices"):
        st.info("Not measured for this run: where its Grad-CAM evidence lies is unknown. Measure it (a few "
                "minutes) with the command below; the page shows it once it is stored.")
        st.code(COMMAND.format(run_id=run["id"]), language="bash")
        return
    share, ratio = test["lung_share"], test["ratio"]
    left, right = st.columns(2)
    left.metric("Grad-CAM evidence in the lungs", f"{test['in_lungs']:.0%}",
                help="Mean share of each test slice's Grad-CAM map (of the class decided) inside its lung fields.")
    right.metric("Against an even map", f"{ratio:.2f}×",
                 help=f"The share above divided by the lungs' share of the slice ({share:.0%}): 1 means no more "
                      "evidence in the lungs than a map spread evenly over the slice.")
    st.caption(f"{test['slices']} of {test['asked']} test slices measured (the others have no lung mask found); "
               f"{test.get('mostly_outside', 0):.0%} of their maps lie mostly outside the lungs. Near 1×, the "
               "scores above may rest on what lies outside the lungs. The whole split and the external panel: `{COMMAND.format(run_id=run['id'])}`.")
