"""Evaluate: a run's test metrics with confidence intervals, ROC and PR
curves, and a threshold slider that updates the confusion matrix and the
metrics together. A confusion-matrix cell opens the Misclassified page."""
import pandas as pd
import streamlit as st

from core.evaluation import classification
from core.inference import calibration, deploy
from ui import charts, navigation, scans
from ui.deployment import deploy_controls
from ui.external import external_section
from ui.external_site_check import external_site_checks
from ui.formatting import fmt
from ui.lung_focus import lung_focus_summary
from ui.glossary import explain
from ui.metrics_table import metrics_table
from ui.runs import (CELLS, all_runs, chosen_threshold, class_names, cross_validation_table, history, pick_run,
                     pixel_counts, predictions, recipes_table, run_calibration, runs_table, threshold_slider)

OPERATING_POINT = (("recall", "Sensitivity"), ("specificity", "Specificity"), ("precision", "Precision"),
                   ("f1", "F1"), ("accuracy", "Accuracy"))
GLOSSARY_TERM = {"Precision": "Precision (PPV)"}


def test_split(run: dict, test: pd.DataFrame) -> None:
    """What the test figures rest on: how many scans, and the threshold chosen without them."""
    method = run["metrics"]["threshold"].get("method", classification.THRESHOLD_RULE)
    rule = "Youden's J" if method == "youden" else "best F1" if method == "f1" else method
    st.caption(f"Test split: {len(test)} images ({int(test['y_true'].sum())} {class_names(run)[1]}). Threshold "
               f"{chosen_threshold(run):.3f} (on the calibrated probability scale) chosen on the validation split "
               f"({rule}); the test split never influenced it, so the test metrics are an unbiased estimate.",
               help=explain("Threshold") + " " + explain("Youden's J"))
    if len(test) < deploy.MIN_TEST_IMAGES:
        st.warning(f"Only {len(test)} test images: these figures say little about how the model would do.",
                   icon=":material/warning:")


def operating_point(run: dict, y, prob) -> tuple[float, dict]:
    """The threshold slider and the metrics at it, against the validation choice; returns both."""
    st.subheader("Operating point")
    threshold = threshold_slider(run)
    at, at_chosen = classification.binary_metrics(y, prob, threshold), run["metrics"]["test"]["at_threshold"]
    for column, (key, label) in zip(st.columns(5), OPERATING_POINT):
        delta = at[key] - at_chosen[key]
        column.metric(label, fmt(at[key]), delta=f"{delta:+.3f}" if abs(delta) > 1e-12 else None,
                      help=explain(GLOSSARY_TERM.get(label, label))
                      + (" The change is against the validation-chosen threshold." if abs(delta) > 1e-12 else ""))
    st.caption(f"{at['tp']} true positives, {at['fp']} false positives, {at['fn']} false negatives, "
               f"{at['tn']} true negatives at threshold {threshold:.3f}.")
    return threshold, at


def curves_and_matrix(run: dict, y, prob, threshold: float, at: dict) -> None:
    """ROC and PR curves with the operating point, and the confusion matrix whose cells open Misclassified."""
    roc_column, pr_column, matrix_column = st.columns(3)
    roc_column.plotly_chart(charts.roc_at_threshold(y, prob, at, run["metrics"]["test"]["at_threshold"],
                                                    threshold, chosen_threshold(run)))
    pr_column.plotly_chart(charts.precision_recall(y, prob, at, threshold))
    with matrix_column:
        st.plotly_chart(charts.confusion_matrix(y, prob, threshold, class_names(run),
                                                f"Confusion matrix at {threshold:.3f}"))
        st.caption("Open the images of a cell:")
        # One button a row: two side by side in a third of the page cut their counts off at 1280 px.
        for cell in ("tn", "fp", "fn", "tp"):
            if st.button(f"{CELLS[cell]} ({at[cell]})", key=f"open_{cell}", width="stretch"):
                st.session_state["cell"] = cell
                st.session_state["review_split"] = "test"
                st.switch_page(navigation.MISCLASSIFIED)


def calibration_section(run: dict, test: pd.DataFrame) -> None:
    """Do the probabilities mean what they say? Reliability and expected calibration error, before and after."""
    st.subheader("Calibration on the test split")
    y, fitted = test["y_true"], run_calibration(run)
    reliability, ece_column = st.columns([2, 1])
    reliability.plotly_chart(charts.reliability(y, {"model's own": test["raw_prob"], "calibrated": test["prob"]},
                                                class_names(run)[1]))
    ece_raw = calibration.expected_calibration_error(y, test["raw_prob"])
    ece_calibrated = calibration.expected_calibration_error(y, test["prob"])
    ece_column.metric("Calibration error, calibrated", f"{ece_calibrated:.3f}",
                      delta=f"{ece_calibrated - ece_raw:+.3f}", delta_color="inverse",
                      help=explain("Expected calibration error (ECE)"))
    ece_column.metric("Calibration error, model's own", f"{ece_raw:.3f}",
                      help=explain("Expected calibration error (ECE)"))
    ece_column.caption(f"Calibration: {fitted.method} ({fitted.note}), fitted on the {fitted.n_val} validation "
                       "predictions only. It is increasing, so every decision is unchanged; the probabilities "
                       "shown everywhere are the calibrated ones.",
                       help=explain("Calibration") + " " + explain("Temperature scaling") + " "
                       + explain("Platt scaling"))


def resolution_section(run: dict, test: pd.DataFrame) -> None:
    """Does the model lean on scan resolution? Probability against pixel count, Spearman's ρ per class,
    and a warning in words when one class reaches the rule (classification.SHORTCUT_RHO)."""
    st.subheader("Shortcut check: scan resolution")
    pixels = pixel_counts(run, test["path"])
    bias = classification.resolution_bias(test, pixels)
    names = dict(enumerate(class_names(run)))
    st.plotly_chart(charts.resolution_scatter(pixels, test["prob"], test["y_true"].map(names), names[1]))
    warning = classification.resolution_warning(bias, names)
    if warning:
        st.warning(warning, icon=":material/warning:")
    else:
        st.success(f"No warning sign: |ρ| < {classification.SHORTCUT_RHO} within each class.",
                   icon=":material/check_circle:")
    st.caption("Spearman ρ between the probability and the scan's pixel count, within each true class: "
               + ", ".join(f"{names[row.y_true]} ρ = {row.rho:+.2f}" for row in bias.itertuples()
                           if row.y_true in names)
               + ". Near 0: the model does not lean on resolution. A clearly negative ρ means low-resolution "
               "scans look more positive, whatever their class: a warning sign where one class's training "
               "scans come at lower resolution (COVID-CT's COVID training scans have half the pixels of the "
               "others). It can also be content: check the low-resolution cases on the Misclassified page.",
               help=explain("Spearman ρ"))


def runs_section(run: dict) -> None:
    """The run's training curves, then every run and the cross-validated recipes."""
    st.subheader("Training curves")
    frame = history(run)
    if len(frame):
        st.plotly_chart(charts.history(frame))
    else:
        st.info("This run has no history.csv.")
    st.subheader("All runs")
    listed = all_runs()
    runs_table(listed)
    st.subheader("Cross-validated recipes")
    recipes_table(cross_validation_table(listed))


run = pick_run()
test = predictions(run).query("split == 'test'")
test_split(run, test)
# The table on its own row: beside the operating point its confidence intervals were cut off at 1280 px.
metrics_table(run, scans.settings(run))
lung_focus_summary(run)
threshold, at = operating_point(run, test["y_true"], test["prob"])
curves_and_matrix(run, test["y_true"], test["prob"], threshold, at)
calibration_section(run, test)
st.subheader("Deployment")
deploy_controls(run, key="evaluate")
resolution_section(run, test)
external_section(run, test["y_true"], test["prob"], class_names(run))
external_site_checks(run)
runs_section(run)
