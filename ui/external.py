"""External validation in the app: a run's results on datasets from other
sources (core.inference.external), cached; the prediction sets whose cases
the Misclassified page reviews (test, val, and each complete external set);
and Evaluate's section that shows those results and starts new ones."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core.inference import calibration, external, external_tables
from core.jobs import background
from core.runs import catalogue
from ui import charts, navigation
from ui.cache_keys import mtime
from ui.runs import chosen_threshold, current_threshold, predictions, run_calibration


def external_sets(run: dict) -> list[dict]:
    """core.inference.external.list_external: the run's external results, complete or not."""
    return external.list_external(run["path"])


def completed_sets(run: dict) -> dict[str, dict]:
    """The metrics of each complete external set, by name."""
    return {found["name"]: found["metrics"] for found in external_sets(run) if found["state"] == "completed"}


@st.cache_data(max_entries=32, show_spinner=False)
def _external_predictions(run_path: str, name: str, stamp: float) -> pd.DataFrame:
    return external.read_predictions(run_path, name)


def external_predictions(run: dict, name: str) -> pd.DataFrame:
    """One external set's predictions.csv (path, label, y_true, prob, patient_id), cached,
    with prob calibrated as the run's own predictions are (the model's own in raw_prob):
    the probability Predict gives the same slice, on the scale of the threshold shown."""
    folder = external.results_dir(run["path"], name)
    frame = _external_predictions(str(run["path"]), name, mtime(folder / "predictions.csv"))
    return calibration.calibrated_predictions(frame, run_calibration(run))


def review_sets(run: dict) -> dict[str, str]:
    """The prediction sets a run's cases can be reviewed in: {key: label}."""
    return {"test": "test", "val": "val", **{f"external:{name}": f"external: {name}" for name in completed_sets(run)}}


def review_predictions(run: dict, key: str) -> pd.DataFrame:
    """The predictions of one review set (see review_sets) with each image's
    file in column "file"."""
    if key.startswith("external:"):
        name = key.removeprefix("external:")
        rows = external_predictions(run, name).copy()
        root = Path(completed_sets(run)[name]["data_dir"])
        rows["file"] = [str(root / relpath) for relpath in rows["path"]]
        return rows
    rows = predictions(run)
    rows = rows[rows["split"] == key].copy()
    rows["file"] = [str(catalogue.image_path(run, relpath)) for relpath in rows["path"]]
    return rows


def external_section(run: dict, y, prob, classes: tuple[str, str]) -> None:
    """Evaluate's external validation: the run's results on other sources
    beside its own test split, the evaluations still running or failed, and
    the form that starts one."""
    st.subheader("External validation")
    st.caption("The same model on labelled scans from a source it never saw (another hospital, another "
               "collection), at the threshold chosen on this run's validation split. A model can score well "
               "on its own test split and near chance elsewhere: this is where that shows. Per patient: each "
               "patient decided as Predict decides one scan of their slices (the run's scan aggregation, at "
               "its scan threshold). CIs resample whole patients.")
    sets = external_sets(run)
    complete = completed_sets(run)
    if complete:
        _results(run, complete, y, prob, classes)
    for found in sets:
        if found["state"] in ("failed", "interrupted", "damaged"):
            st.warning(f"External set **{found['name']}** {found['state']}: "
                       f"{found['status'].get('reason', 'its process ended without finishing')}")
    any_running = any(found["state"] == "running" for found in sets)
    # Refresh every 2 s while an external evaluation runs; a full rerun when it ends shows its results.
    st.fragment(_progress, run_every=2 if any_running else None)(run, any_running)
    _start_form(run, classes, expanded=not complete)


def _results(run: dict, complete: dict[str, dict], y, prob, classes: tuple[str, str]) -> None:
    """Every complete set against the internal test split, then one set in detail."""
    st.dataframe(external_tables.summary_table(run["metrics"], complete), hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in ("ROC-AUC", "sensitivity", "specificity", "accuracy", "F1")})
    name = st.selectbox("External set", list(complete), key=f"external_{run['id']}")
    chosen, rows = complete[name], external_predictions(run, name)
    threshold = chosen_threshold(run)  # the run's validation choice, calibrated as rows["prob"] is
    table_column, roc_column, matrix_column = st.columns(3)
    with table_column:
        st.dataframe(external_tables.comparison_table(run["metrics"], chosen),
                     column_config={c: st.column_config.NumberColumn(format="%.3f") for c in
                                    ("internal test", "external slices", "external patients")})
        st.caption(f"{chosen['slice']['n']} slices of {chosen['slice']['patients']} patients from "
                   f"{chosen['data_dir']}, at the threshold chosen on validation, {threshold:.3f} on the "
                   "calibrated scale of every probability shown (the same decisions as the model's own "
                   f"{chosen['threshold']:.3f} on its raw outputs)."
                   + (f" {len(chosen['problems'])} unreadable files were left out." if chosen.get("problems") else ""))
    with roc_column:
        st.plotly_chart(charts.roc_curves({"internal test": (y, prob),
                                           f"{name} (slices)": (rows["y_true"], rows["prob"])}))
    with matrix_column:
        st.plotly_chart(charts.confusion_matrix(rows["y_true"], rows["prob"], threshold, classes,
                                                f"{name}: slices at {threshold:.3f}"))
        if st.button("Review its mistakes with Grad-CAM", key="review_external", icon=":material/image_search:"):
            review_mistakes(run, name, rows)


def review_mistakes(run: dict, name: str, rows: pd.DataFrame) -> None:
    """Open Misclassified on the set's false positives, or its false negatives when it has none,
    at the threshold Misclassified works at (ui.runs.current_threshold)."""
    threshold = current_threshold(run)
    st.session_state["review_split"] = f"external:{name}"
    st.session_state["cell"] = "fp" if (rows["prob"] >= threshold)[rows["y_true"] == 0].any() else "fn"
    st.switch_page(navigation.MISCLASSIFIED)


def _progress(run: dict, any_running: bool) -> None:
    """A progress bar per running evaluation; the page reruns whole when the last one ends."""
    running = [found for found in external_sets(run) if found["state"] == "running"]
    if any_running and not running:
        st.rerun()
    for found in running:
        done, total = found["status"].get("done") or 0, found["status"].get("total")
        st.progress(done / total if total else 0.0,
                    text=f"Evaluating on **{found['name']}**: " + (f"{done}/{total} images" if total
                                                                    else "loading the model…"))


def _start_form(run: dict, classes: tuple[str, str], expanded: bool) -> None:
    """The form that evaluates the run on another dataset folder, in the background."""
    with st.expander("Evaluate this run on another dataset", icon=":material/travel_explore:", expanded=expanded):
        with st.form("external_form"):
            folder = st.text_input("Dataset folder", placeholder="/data/hospital-b",
                                   help="One sub-folder per class (COVID, NonCOVID), optionally one sub-folder "
                                        "per patient inside each; PNG, JPEG or DICOM.")
            set_name = st.text_input("Name", placeholder="the folder's name",
                                     help="What the result is called in this run (letters, digits, . _ -).")
            class_map = st.text_input("Class folders named otherwise",
                                      placeholder="COVID19=COVID,non-COVID19=NonCOVID",
                                      help="FOLDER=CLASS pairs, for class folders whose names are not this run's "
                                           f"classes ({classes[0]}, {classes[1]}).")
            if st.form_submit_button("Start", icon=":material/play_arrow:"):
                try:
                    started = background.launch_external(run["path"], folder.strip(), set_name.strip() or None,
                                                         class_map)
                except ValueError as error:
                    st.error(str(error))
                else:
                    st.success(f"Evaluating on {started} in the background.")
                    st.rerun()
