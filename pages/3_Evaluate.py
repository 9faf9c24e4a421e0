"""Evaluate: a run's test metrics with confidence intervals, ROC and PR
curves, and a threshold slider that updates the confusion matrix and the
metrics together. A confusion-matrix cell opens the Misclassified page."""
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

import scan_ui
import ui
from core.inference import calibration
from core.inference import deploy
from core.evaluation import tables
from core.evaluation import classification
from core.inference import external
from core.jobs import background
from core.runs import catalogue
from core.evaluation import patient_level

ui.page_setup("Evaluate")
run = ui.pick_run()
metrics = run["metrics"]
negative, positive = ui.class_names(run)
chosen = ui.chosen_threshold(run)
test = ui.predictions(run).query("split == 'test'")
y, prob = test["y_true"], test["prob"]
method = metrics["threshold"].get("method", classification.THRESHOLD_RULE)
st.caption(f"Test split: {len(test)} images ({int(y.sum())} {positive}). Threshold "
           f"{chosen:.3f} (on the calibrated probability scale) chosen on the validation split ({method}); "
           "the test split never influenced it, so the test metrics are an unbiased estimate.")
if len(test) < deploy.MIN_TEST_IMAGES:
    st.warning(f"Only {len(test)} test images: these figures say little about how the model would do.",
               icon=":material/warning:")

# --- Metrics at the validation-chosen threshold, with 95% bootstrap CIs --------
NAMES = {"accuracy": "Accuracy", "precision": "Precision (PPV)", "recall": "Sensitivity (recall)",
         "specificity": "Specificity", "f1": "F1", "roc_auc": "ROC-AUC",
         "pr_auc": "PR-AUC (average precision)"}
table = tables.metrics_table(metrics).rename(index=NAMES)
table.insert(1, "95% CI", [f"{ui.fmt(low)} – {ui.fmt(high)}" for low, high in
                           zip(table["ci_low"], table["ci_high"])])
scan_settings = scan_ui.settings(run)
per_patient = scan_settings.get("test_patients")
if per_patient:  # patients known from the dataset's metadata: the same metrics per patient
    patients = tables.metrics_table({"test": {"at_threshold": per_patient}}).rename(index=NAMES)
    table["per patient"] = patients["value"]
    table["per patient 95% CI"] = [f"{ui.fmt(low)} – {ui.fmt(high)}" for low, high in
                                   zip(patients["ci_low"], patients["ci_high"])]
left, right = st.columns([2, 3])
with left:
    st.subheader("Test metrics")
    st.dataframe(table, column_config={"value": st.column_config.NumberColumn("per slice", format="%.3f"),
                                       "95% CI": "per slice 95% CI", "ci_low": None, "ci_high": None,
                                       "per patient": st.column_config.NumberColumn(format="%.3f")})
    st.caption("Per slice: at the validation-chosen threshold; CIs: percentile bootstrap over the test images."
               + (f" Per patient: the {per_patient['n']} test patients, each scored by the "
                  f"{patient_level.AGGREGATIONS[scan_settings['aggregation']]}, decided at the scan threshold "
                  f"{scan_settings['threshold']:.3f} chosen on the {scan_settings['val_patients']} validation "
                  "patients (as Predict decides a whole scan); CIs resample patients." if per_patient else ""))

# --- Threshold: everything below follows the slider ------------------------------
with right:
    st.subheader("Operating point")
    threshold = ui.threshold_slider(run)
    at = classification.binary_metrics(y, prob, threshold)
    at_chosen = metrics["test"]["at_threshold"]
    columns = st.columns(5)
    for column, (key, label) in zip(columns, (("recall", "Sensitivity"), ("specificity", "Specificity"),
                                              ("precision", "Precision"), ("f1", "F1"),
                                              ("accuracy", "Accuracy"))):
        delta = at[key] - at_chosen[key]
        column.metric(label, ui.fmt(at[key]), delta=f"{delta:+.3f}" if abs(delta) > 1e-12 else None,
                      help="Change against the validation-chosen threshold." if abs(delta) > 1e-12 else None)
    st.caption(f"{at['tp']} true positives, {at['fp']} false positives, {at['fn']} false negatives, "
               f"{at['tn']} true negatives at threshold {threshold:.3f}.")

# --- Curves and confusion matrix ---------------------------------------------------
INSIDE_BOTTOM_RIGHT = dict(x=0.98, y=0.02, xanchor="right", yanchor="bottom",
                           bgcolor="rgba(0,0,0,0.3)")
roc_column, pr_column, matrix_column = st.columns(3)
with roc_column:
    roc = tables.roc_points(y, prob)
    figure = go.Figure(go.Scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", showlegend=False,
                                  customdata=roc["threshold"],
                                  hovertemplate="FPR %{x:.3f}, TPR %{y:.3f}<br>threshold %{customdata:.3f}"))
    figure.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line_dash="dot", line_color="gray",
                       name="chance", showlegend=False)
    figure.add_scatter(x=[1 - at_chosen["specificity"]], y=[at_chosen["recall"]], mode="markers",
                       marker=dict(size=12, symbol="circle-open", color="gray", line_width=2),
                       name=f"validation choice {chosen:.3f}")
    figure.add_scatter(x=[1 - at["specificity"]], y=[at["recall"]], mode="markers",
                       marker=dict(size=12, color="red"), name=f"threshold {threshold:.3f}")
    figure.update_layout(title=f"ROC curve (AUC {ui.fmt(at['roc_auc'])})", height=400,
                         xaxis_title="1 − specificity", yaxis_title="sensitivity",
                         legend=INSIDE_BOTTOM_RIGHT)
    st.plotly_chart(figure)
with pr_column:
    pr = tables.pr_points(y, prob)
    figure = go.Figure(go.Scatter(x=pr["recall"], y=pr["precision"], mode="lines", showlegend=False,
                                  line_shape="hv"))
    figure.add_hline(y=y.mean(), line_dash="dot", line_color="gray",
                     annotation_text="prevalence", annotation_position="bottom right")
    figure.add_scatter(x=[at["recall"]], y=[at["precision"]], mode="markers",
                       marker=dict(size=12, color="red"), name=f"threshold {threshold:.3f}")
    figure.update_layout(title=f"Precision-recall (AP {ui.fmt(at['pr_auc'])})", height=400,
                         xaxis_title="recall", yaxis_title="precision", showlegend=False)
    st.plotly_chart(figure)
with matrix_column:
    matrix = tables.confusion_frame(y, prob, threshold, labels=(negative, positive))
    figure = px.imshow(matrix, text_auto=True, color_continuous_scale="Blues", aspect="auto")
    figure.update_layout(title=f"Confusion matrix at {threshold:.3f}", height=400,
                         coloraxis_showscale=False)
    figure.update_traces(textfont_size=22)
    st.plotly_chart(figure)
    # One button per cell: it opens the Misclassified page on that cell.
    st.caption("Open the images of a cell:")
    cell_columns = st.columns(2)
    for i, cell in enumerate(("tn", "fp", "fn", "tp")):
        if cell_columns[i % 2].button(f"{ui.CELLS[cell]} ({at[cell]})", key=f"open_{cell}",
                                      width="stretch"):
            st.session_state["cell"] = cell
            st.session_state["review_split"] = "test"
            st.switch_page(ui.MISCLASSIFIED)

# --- Calibration: do the probabilities mean what they say? ---------------------------
st.subheader("Calibration on the test split")
fitted = ui.run_calibration(run)
reliability, ece_column = st.columns([2, 1])
with reliability:
    figure = go.Figure()
    figure.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line_dash="dot", line_color="gray", name="perfect")
    for label, probabilities in (("model's own", test["raw_prob"]), ("calibrated", prob)):
        bins = calibration.reliability_table(y, probabilities)
        figure.add_scatter(x=bins["predicted"], y=bins["observed"], mode="lines+markers", name=label,
                           customdata=bins["n"], hovertemplate="predicted %{x:.2f}, observed %{y:.2f}"
                                                               "<br>%{customdata} scans")
    figure.update_layout(title="Reliability diagram (10 bins)", height=360, xaxis_title=f"predicted P({positive})",
                         yaxis_title=f"observed share of {positive}", legend=INSIDE_BOTTOM_RIGHT)
    st.plotly_chart(figure)
with ece_column:
    ece_raw = calibration.expected_calibration_error(y, test["raw_prob"])
    ece_calibrated = calibration.expected_calibration_error(y, prob)
    st.metric("Expected calibration error, calibrated", f"{ece_calibrated:.3f}",
              delta=f"{ece_calibrated - ece_raw:+.3f}", delta_color="inverse",
              help="Mean gap between predicted probability and observed share of positives, over 10 bins "
                   "weighted by their scans. 0 is perfect.")
    st.metric("Expected calibration error, model's own", f"{ece_raw:.3f}")
    st.caption(f"Calibration: {fitted.method} ({fitted.note}), fitted on the {fitted.n_val} validation "
               "predictions only. It is increasing, so every decision is unchanged; the probabilities shown "
               "everywhere are the calibrated ones.")

# --- Deployment ------------------------------------------------------------------------
st.subheader("Deployment")
ui.deploy_controls(run, key="evaluate")

# --- Does the model lean on scan resolution? -----------------------------------------
st.subheader("Shortcut check: scan resolution")
pixels = ui.pixel_counts(run, test["path"])
bias = classification.resolution_bias(test, pixels).set_index("y_true")
names = {0: negative, 1: positive}
figure = px.scatter(x=pixels, y=prob, color=y.map(names), log_x=True, opacity=0.7,
                    labels={"x": "pixels in the scan file (width × height)", "y": f"P({positive})",
                            "color": "true class"})
figure.update_layout(height=360)
st.plotly_chart(figure)
st.caption("Spearman ρ between the probability and the scan's pixel count, within each true class: "
           + ", ".join(f"{names[c]} ρ = {bias.rho[c]:+.2f}" for c in bias.index if c in names)
           + ". Near 0: the model does not lean on resolution. A clearly negative ρ means low-resolution "
           "scans look more positive, whatever their class: a warning sign where one class's training "
           "scans come at lower resolution (COVID-CT's COVID training scans have half the pixels of the "
           "others). It can also be content: check the low-resolution cases on the Misclassified page.")

# --- External validation: the run on scans from other sources -----------------------
st.subheader("External validation")
st.caption("The same model on labelled scans from a source it never saw (another hospital, another "
           "collection), at the threshold chosen on this run's validation split. A model can score well "
           "on its own test split and near chance elsewhere: this is where that shows. Per patient: the "
           "mean of the patient's slice probabilities. CIs resample whole patients.")
sets = ui.external_sets(run)
complete = {found["name"]: found["metrics"] for found in sets if found["state"] == "completed"}
if complete:
    st.dataframe(external.summary_table(metrics, complete), hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in ("ROC-AUC", "sensitivity", "specificity", "accuracy", "F1")})
    name = st.selectbox("External set", list(complete), key=f"external_{run['id']}")
    chosen_set = complete[name]
    rows = ui.external_predictions(run, name)
    table_column, roc_column, matrix_column = st.columns(3)
    with table_column:
        st.dataframe(external.comparison_table(metrics, chosen_set),
                     column_config={c: st.column_config.NumberColumn(format="%.3f") for c in
                                    ("internal test", "external slices", "external patients")})
        st.caption(f"{chosen_set['slice']['n']} slices of {chosen_set['slice']['patients']} patients from "
                   f"{chosen_set['data_dir']}, threshold {chosen_set['threshold']:.3f}."
                   + (f" {len(chosen_set['problems'])} unreadable files were left out."
                      if chosen_set.get("problems") else ""))
    with roc_column:
        st.plotly_chart(ui.roc_figure({"internal test": (y, prob),
                                       f"{name} (slices)": (rows["y_true"], rows["prob"])}))
    with matrix_column:
        matrix = tables.confusion_frame(rows["y_true"], rows["prob"], chosen_set["threshold"],
                                          labels=(negative, positive))
        figure = px.imshow(matrix, text_auto=True, color_continuous_scale="Blues", aspect="auto")
        figure.update_layout(title=f"{name}: slices at {chosen_set['threshold']:.3f}", height=400,
                             coloraxis_showscale=False)
        figure.update_traces(textfont_size=22)
        st.plotly_chart(figure)
        if st.button("Review its mistakes with Grad-CAM", key="review_external", icon=":material/image_search:"):
            st.session_state["review_split"] = f"external:{name}"
            st.session_state["cell"] = "fp" if (rows["prob"] >= chosen_set["threshold"])[rows["y_true"] == 0].any() \
                else "fn"
            st.switch_page(ui.MISCLASSIFIED)
for found in sets:
    if found["state"] in ("failed", "interrupted", "damaged"):
        st.warning(f"External set **{found['name']}** {found['state']}: "
                   f"{found['status'].get('reason', 'its process ended without finishing')}")

any_running = any(found["state"] == "running" for found in sets)


# Refresh every 2 s while an external evaluation runs; a full rerun when it ends shows its results.
@st.fragment(run_every=2 if any_running else None)
def external_progress():
    running = [found for found in ui.external_sets(run) if found["state"] == "running"]
    if any_running and not running:
        st.rerun()
    for found in running:
        done, total = found["status"].get("done") or 0, found["status"].get("total")
        st.progress(done / total if total else 0.0,
                    text=f"Evaluating on **{found['name']}**: " + (f"{done}/{total} images" if total
                                                                    else "loading the model…"))


external_progress()
with st.expander("Evaluate this run on another dataset", icon=":material/travel_explore:", expanded=not complete):
    with st.form("external_form"):
        folder = st.text_input("Dataset folder", placeholder="/data/hospital-b",
                               help="One sub-folder per class (COVID, NonCOVID), optionally one sub-folder per "
                                    "patient inside each; PNG, JPEG or DICOM.")
        set_name = st.text_input("Name", placeholder="the folder's name",
                                 help="What the result is called in this run (letters, digits, . _ -).")
        class_map = st.text_input("Class folders named otherwise", placeholder="COVID19=COVID,non-COVID19=NonCOVID",
                                  help="FOLDER=CLASS pairs, for class folders whose names are not this run's "
                                       f"classes ({negative}, {positive}).")
        if st.form_submit_button("Start", icon=":material/play_arrow:"):
            try:
                started = background.launch_external(run["path"], folder.strip(), set_name.strip() or None, class_map)
            except ValueError as error:
                st.error(str(error))
            else:
                st.success(f"Evaluating on {started} in the background.")
                st.rerun()

# --- Training curves and all runs ---------------------------------------------------
st.subheader("Training curves")
frame = ui.history(run)
if len(frame):
    st.plotly_chart(ui.history_figure(frame))
else:
    st.info("This run has no history.csv.")

st.subheader("All runs")
all_runs = catalogue.list_runs()
ui.runs_table(all_runs)

st.subheader("Cross-validated recipes")
recipes = ui.cross_validation_table(all_runs)
if len(recipes):
    st.dataframe(recipes, hide_index=True, column_config={
        **{c: st.column_config.NumberColumn(format="%.3f") for c in recipes if c.endswith(("roc_auc", "_ci_low",
                                                                                          "_ci_high"))},
        "vs_defaults": st.column_config.NumberColumn("vs defaults", format="%+.3f",
                                                     help="Mean fold-by-fold difference from the project "
                                                          "defaults on the same folds"),
        "vs_defaults_se": st.column_config.NumberColumn("± SE", format="%.3f"),
        "fold_roc_auc": "ROC-AUC per fold"})
    st.caption("Each recipe's fold runs validate on disjoint folds of whole patients drawn from train + val, "
               "so every one of those scans is scored once by a model that never trained on it. The mean "
               "fold ROC-AUC is the recipe's score, steadier than one validation split. Folds differ in "
               "difficulty more than recipes do, so *vs defaults* compares a recipe with the project defaults "
               "fold by fold, on the same folds: a gain smaller than about two standard errors is noise. "
               "The pooled figure ranks all folds' scans together and also asks that the fold models' "
               "probabilities agree. Test predictions stay out: recipes are chosen here, test is reported "
               "for the chosen one.")
else:
    st.info("No cross-validation runs yet: on the Train page set *Cv folds* and train one run per *Cv fold*, "
            "or run `python -m core cv`. The folds of each recipe are scored here together.")
