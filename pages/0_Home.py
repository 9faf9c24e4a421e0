"""Home: what the app does, the dataset in use, the trained runs, and the pages."""
import streamlit as st

import ui
from core.base import paths
from core.runs import catalogue

ui.page_setup("COVID-19 CT Explorer")
st.warning(ui.DISCLAIMER, icon=":material/warning:")
st.markdown(
    "Train, evaluate and inspect **ResNet classifiers that tell COVID-19 from non-COVID CT "
    "slices**. Every model is an ImageNet ResNet fine-tuned on the dataset below; its "
    "operating threshold is chosen on the validation split and its test metrics come with "
    "95% bootstrap confidence intervals. Grad-CAM heatmaps show which parts of a slice "
    "drove a prediction.")

st.subheader("Dataset")
try:
    index = ui.load_index()
except ValueError as error:
    st.error(f"The dataset cannot be read: {error}. Set $COVIDCT_DATA to the COVID-CT folder.")
else:
    counts = index["label"].value_counts().sort_index()
    columns = st.columns(2 + len(counts))
    columns[0].metric("Images", len(index))
    columns[1].metric("Patients", index["patient_id"].nunique(),
                      help="Images without a known patient count as their own patient.")
    for column, (label, count) in zip(columns[2:], counts.items()):
        column.metric(label, count)
    st.caption(f"UCSD COVID-CT (Zhao et al., arXiv:2003.13865) in {paths.data_dir()} · "
               f"{index.attrs.get('split_source', '')}. The images come from COVID-19 papers; "
               "use them for research only.")

st.subheader("Trained runs")
all_runs = catalogue.list_runs()
if all_runs:
    st.caption("Newest first; test metrics at each run's validation-chosen threshold.")
    ui.runs_table(all_runs)
else:
    ui.no_runs_yet("a trained run to show its results")

st.subheader("Pages")
pages = (
    (ui.DATA, "Classes, splits, image sizes, patients, a gallery and the duplicate audit."),
    (ui.TRAIN, "Set every hyperparameter, preview augmentation, start a run and follow it."),
    (ui.EVALUATE, "Metrics with confidence intervals, ROC and PR curves, threshold, confusion matrix."),
    (ui.MISCLASSIFIED, "False positives and false negatives next to their Grad-CAM."),
    (ui.PREDICT, "Upload scans (PNG, JPEG, DICOM) for a probability and Grad-CAM overlays."),
)
titles = {page: title for page, title, _ in ui.PAGES}
for column, (page, what) in zip(st.columns(len(pages)), pages):
    with column.container(border=True, height="stretch"):
        st.page_link(page, label=titles[page], icon=ui.icon(page))
        st.caption(what)
