"""Home: what the app does, a newcomer's first model in one step (ui.first_model), the dataset in use,
the trained runs, and the pages.
It loads no TensorFlow (tests/test_app_layout.py), so the app opens fast."""
import streamlit as st

from core.base import paths
from ui import frame, navigation
from ui.dataset_cache import dataset_error, load_index, training_images
from ui.first_model import first_model_step
from ui.runs import all_runs, no_runs_yet, runs_table

PAGE_SUMMARIES = (
    (navigation.DATA, "Classes, splits, image sizes, patients, a gallery and the duplicate audit."),
    (navigation.TRAIN, "Set every hyperparameter, preview augmentation, start a run and follow it."),
    (navigation.EVALUATE, "Metrics with confidence intervals, ROC and PR curves, threshold, confusion matrix."),
    (navigation.MISCLASSIFIED, "False positives and false negatives next to their Grad-CAM."),
    (navigation.PREDICT, "Upload scans (PNG, JPEG, DICOM) for a probability and Grad-CAM overlays."),
)


def introduction() -> None:
    """The disclaimer and what the models are."""
    frame.disclaimer_banner()
    st.markdown(
        "Train, evaluate and inspect **ResNet classifiers that tell COVID-19 from non-COVID CT "
        "slices**. Every model is an ImageNet ResNet fine-tuned on the dataset below; its "
        "operating threshold is chosen on the validation split and its test metrics come with "
        "95% bootstrap confidence intervals. Grad-CAM heatmaps show which parts of a slice "
        "drove a prediction.")


def dataset_section() -> None:
    """Images, patients and images per class of the dataset in use, or why it cannot be read."""
    st.subheader("Dataset")
    try:
        index = load_index()
    except ValueError as error:
        dataset_error(error)
        return
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


def runs_section() -> None:
    """The table of trained runs, or a pointer to Train."""
    st.subheader("Trained runs")
    listed = all_runs()
    if listed:
        st.caption("Newest first; test metrics at each run's validation-chosen threshold.")
        runs_table(listed)
    else:
        no_runs_yet("a trained run to show its results")


def pages_section() -> None:
    """One card per page: a link and what it is for."""
    st.subheader("Pages")
    for column, (page, what) in zip(st.columns(len(PAGE_SUMMARIES)), PAGE_SUMMARIES):
        with column.container(border=True, height="stretch"):
            st.page_link(page, label=navigation.title(page), icon=navigation.icon(page))
            st.caption(what)


introduction()
first_model_step(training_images())
dataset_section()
runs_section()
pages_section()
