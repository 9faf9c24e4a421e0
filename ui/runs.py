"""Runs as the pages show them: the run picker and the threshold slider that
follow the user from page to page (session state), a run's cached
predictions, calibration and history, and the table of all runs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.base import paths
from core.data import images
from core.inference import calibration, deploy, site_store
from core.runs import catalogue, recipes, storage
from ui import navigation
from ui.cache_keys import mtime
from ui.column_names import human
from ui.formatting import fmt

# The four cells of the confusion matrix, as Evaluate's buttons and the Misclassified page name them.
CELLS = {"fp": "False positives", "fn": "False negatives",
         "tp": "True positives", "tn": "True negatives"}


def run_label(run: dict) -> str:
    """A run in a list: its id, backbone, input size and test ROC-AUC when known."""
    test = ((run["metrics"] or {}).get("test") or {}).get("at_threshold") or {}
    auc = f" · test ROC-AUC {fmt(test['roc_auc'])}" if test.get("roc_auc") is not None else ""
    config = run["config"]
    return f"{run['id']} ({config.get('backbone', '?')}, {config.get('input_size', '?')} px{auc})"


def no_runs_yet(what: str = "a completed training run") -> None:
    """Says the page needs a run and there is none, with a link to Train."""
    st.info(f"This page needs {what}, and there is none yet in {paths.runs_dir()}. "
            "Train one first.")
    st.page_link(navigation.TRAIN, label="Go to Train", icon=navigation.icon(navigation.TRAIN))


def pick_run(needs_test_results: bool = True) -> dict:
    """Select a completed run (newest first). The choice is kept for the whole
    session, so Evaluate, Misclassified and Predict show the same run. With no
    usable run the page says so, links to Train and stops."""
    usable = [run for run in all_runs()
              if (catalogue.has_results(run) if needs_test_results else catalogue.has_model(run))]
    if not usable:
        no_runs_yet()
        st.stop()
    by_id = {run["id"]: run for run in usable}
    if st.session_state.get("run_id") not in by_id:
        st.session_state["run_id"] = usable[0]["id"]
    run_id = st.selectbox("Run", list(by_id), format_func=lambda i: run_label(by_id[i]),
                          key="run_id", persist_state="session")
    return by_id[run_id]


def class_names(run: dict) -> tuple[str, str]:
    """(negative, positive) class names of a run."""
    return storage.class_names(run["config"], run["metrics"])


@st.cache_data(max_entries=32, show_spinner=False)
def _calibration(run_path: str, stamp: float) -> calibration.Calibration:
    return site_store.calibration_of(run_path)


def run_calibration(run: dict) -> calibration.Calibration:
    """The run's own calibration (core.inference.site_store.calibration_of, as Predict's
    without a site), cached until predictions.csv changes."""
    return _calibration(str(run["path"]), mtime(run["path"] / "predictions.csv"))


def chosen_threshold(run: dict) -> float:
    """The validation-chosen threshold on the calibrated scale (as predictions(run) are)."""
    return run_calibration(run).threshold


def threshold_key(run: dict) -> str:
    """The session key that holds the decision threshold of `run`, on the calibrated scale."""
    return f"threshold_{run['id']}"


def current_threshold(run: dict) -> float:
    """The threshold Evaluate and Misclassified work at for `run`: the user's
    choice this session; in a new session (a reload) the one in the page's
    URL, where threshold_slider keeps it; else the one chosen on validation."""
    key = threshold_key(run)
    if key not in st.session_state:
        st.session_state[key] = _threshold_in_url(run)
        if st.session_state[key] is None:
            st.session_state[key] = chosen_threshold(run)
    return float(st.session_state[key])


def _threshold_in_url(run: dict) -> float | None:
    """The threshold the URL holds for this run (?threshold=0.300&threshold_run=ID), if a valid one."""
    if st.query_params.get("threshold_run") != run["id"]:
        return None
    try:
        value = float(st.query_params.get("threshold", ""))
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None


def threshold_slider(run: dict) -> float:
    """The decision threshold for `run`, shared by Evaluate and Misclassified.
    It starts at the threshold chosen on the validation split.

    The value lives under a plain session key (threshold_key), not under the
    slider's: Streamlit cleans up a widget's state on every run of a page
    that does not draw it, so a slider-keyed value fell back to 0.000 on
    every second switch between the two pages by the menu. The slider is
    drawn from the plain key each run and writes back to it when moved."""
    store, widget = threshold_key(run), f"threshold_slider_{run['id']}"
    chosen = chosen_threshold(run)
    st.session_state[widget] = current_threshold(run)
    threshold = st.slider(
        "Decision threshold: a probability of COVID-19 at or above it counts as positive",
        0.0, 1.0, step=0.001, format="%.3f", key=widget,
        on_change=lambda: st.session_state.update({store: st.session_state[widget]}))
    # A callback, because a widget's value can only be set before it is drawn.
    st.button(f"Reset to the threshold chosen on validation ({chosen:.3f})", type="tertiary",
              icon=":material/restart_alt:", key=f"reset_{store}", disabled=threshold == chosen,
              on_click=lambda: st.session_state.update({store: chosen}))
    # In the URL too, so a reload (a new session) comes back at the same threshold.
    st.query_params.update({"threshold": f"{threshold:.3f}", "threshold_run": run["id"]})
    return float(threshold)


@st.cache_data(max_entries=32, show_spinner=False)
def _predictions(run_path: str, stamp: float) -> pd.DataFrame:
    return storage.read_predictions(run_path)


def predictions(run: dict) -> pd.DataFrame:
    """The run's predictions.csv (path, y_true, prob, split), cached, with
    prob calibrated (core.inference.calibration) and the model's own in raw_prob."""
    frame = _predictions(str(run["path"]), mtime(run["path"] / "predictions.csv"))
    return calibration.calibrated_predictions(frame, run_calibration(run))


@st.cache_data(max_entries=32, show_spinner=False)
def _history(run_path: str, stamp: float) -> pd.DataFrame:
    return storage.read_history(run_path)


def history(run: dict) -> pd.DataFrame:
    """The run's per-epoch log (empty before the first epoch ends), cached
    until the training process appends the next epoch."""
    try:
        return _history(str(run["path"]), mtime(run["path"] / "history.csv"))
    except pd.errors.ParserError:  # caught mid-write: the next refresh reads it whole
        return pd.DataFrame()


@st.cache_data(max_entries=32, show_spinner=False)
def _pixel_counts(files: tuple) -> np.ndarray:
    sizes = images.image_sizes(files)
    return (sizes.width * sizes.height).to_numpy()


def pixel_counts(run: dict, relpaths) -> np.ndarray:
    """width x height of each image file (NaN where unreadable), from headers, cached."""
    return _pixel_counts(tuple(str(catalogue.image_path(run, relpath)) for relpath in relpaths))


def runs_table(all_runs: list[dict], key: str = "show_all_runs") -> None:
    """catalogue.compare_runs as a table: settings and test metrics of every
    completed full-data run; a toggle adds smoke (subset), cancelled and failed runs."""
    shown = [run for run in all_runs if deploy.for_comparison(run)]
    hidden = len(all_runs) - len(shown)
    if hidden and st.toggle(f"Show smoke, cancelled and failed runs ({hidden})", key=key,
                            help="Runs on a subset of the images, or that did not complete: their "
                                 "figures do not estimate anything."):
        shown = all_runs
    if not shown:
        st.info("No completed full-data run yet.")
        return
    table = catalogue.compare_runs(shown)
    # Results first, then the settings that produced them.
    results = [c for c in table if c.startswith(("val_", "test_"))]
    table = table[["run", "state", *results, *[c for c in table if c not in results + ["run", "state"]]]]
    table["train_seconds"] = pd.to_numeric(table["train_seconds"], errors="coerce") / 60  # minutes
    st.dataframe(table, hide_index=True, column_config={
        **{c: human(c) for c in table},
        **{c: st.column_config.NumberColumn(human(c), format="%.3f") for c in results},
        "head_lr": st.column_config.NumberColumn(human("head_lr"), format="%.0e"),
        "finetune_lr": st.column_config.NumberColumn(human("finetune_lr"), format="%.0e"),
        "train_seconds": st.column_config.NumberColumn(human("train_seconds"), format="%.0f"),
    })


def recipes_table(table: pd.DataFrame) -> None:
    """The cross-validated recipes (cross_validation_table), fold by
    fold against the project defaults, and how to read them; or how to get some."""
    if not len(table):
        st.info("No cross-validation runs yet: on the Train page set *Cv folds* and train one run per *Cv fold*, "
                "or run `python -m core cv`. The folds of each recipe are scored here together.")
        return
    scores = [c for c in table if c.endswith(("roc_auc", "_ci_low", "_ci_high"))]
    st.dataframe(table, hide_index=True, column_config={
        **{c: st.column_config.NumberColumn(format="%.3f") for c in scores},
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


@st.cache_data(max_entries=8, show_spinner="Scoring the cross-validated recipes…")
def _cross_validation(run_paths: tuple, stamps: tuple) -> pd.DataFrame:
    return recipes.cross_validation_table([catalogue.load_run(path) for path in run_paths])


def cross_validation_table(all_runs: list[dict]) -> pd.DataFrame:
    """recipes.cross_validation_table over the completed fold runs, cached until
    one of their predictions changes or a fold is added."""
    folds = [run for group in catalogue.cross_validation_groups(all_runs) for run in group]
    return _cross_validation(tuple(str(run["path"]) for run in folds),
                             tuple(mtime(run["path"] / "predictions.csv") for run in folds))


def all_runs() -> list[dict]:
    """Every run, newest first; a runs folder that cannot be read stops the page
    with its reason (core.runs.catalogue.list_runs), never a traceback."""
    try:
        return catalogue.list_runs()
    except (ValueError, OSError) as error:
        st.error(f"The runs cannot be listed: {error}")
        st.stop()
