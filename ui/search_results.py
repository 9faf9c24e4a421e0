"""The Search page's live view of a study: its trials as they finish (the
best in colour), a chart, Stop while it runs, Promote once it has a best
trial, and the end of its log. The search runs in its own process; this
only reads its study."""
from __future__ import annotations

import streamlit as st

from core.jobs import background, log_tail
from core.training import studies
from ui import charts
from ui.column_names import human, readable
from ui.train_form import forget_train_form

BEST_ROW = "background-color: rgba(46, 160, 67, 0.35)"


def search_results(name: str, worker_at_start: bool) -> None:
    """The study `name`, refreshed on its own every 3 s while its worker runs
    (worker_at_start); a full rerun once the search ends turns that off."""
    st.fragment(_results, run_every=3 if worker_at_start else None)(name, worker_at_start)


def _results(name: str, worker_at_start: bool) -> None:
    try:
        study = studies.load_study(name)
    except ValueError:
        st.info("No study by this name yet: choose the space and start one.")
        return
    table, best, worker = studies.trials_table(study), studies.best_trial(study), background.search_worker(name)
    if worker_at_start and not worker:
        st.rerun()  # the search ended: redraw the page once, without refreshing
    finished = int(table["state"].isin(["complete", "pruned"]).sum()) if len(table) else 0
    state = f"running in process {worker['pid']}" if worker else "no search running"
    st.markdown(f"**{name}**: {finished} finished trial(s) of {len(table)}, {state}.")
    if worker and st.button("Stop search"):
        background.stop_search(name)
        st.info("Stop requested: the trial in progress is cancelled and recorded as failed.")
    scored = table.dropna(subset=["val_roc_auc"])
    if len(scored):
        st.plotly_chart(charts.search_trials(scored))
    if len(table):
        st.dataframe(styled_trials(table, best), hide_index=True)
    if best is not None:
        _best(name, best)
    _log(name)


def styled_trials(table, best):
    """The trials table with human column names, times in minutes, the best trial's row in colour and readable numbers."""
    table = readable(table)
    colour = [BEST_ROW] * len(table.columns)
    styler = table.style.apply(lambda row: colour if best and row[human("trial")] == best.number
                               else [""] * len(row), axis=1)
    rates = [human(c) for c in ("head_lr", "finetune_lr") if human(c) in table]
    return styler.format(precision=3, na_rep="").format("{:.1e}", subset=rates, na_rep="")


def _best(name: str, best) -> None:
    """The best trial, and Promote: the Train form then starts from its settings."""
    st.success(f"Best: trial {best.number}, validation ROC-AUC {best.value:.3f} "
               f"(run {best.user_attrs.get('run')}).")
    if st.button("Promote best to default", help="The Train form and `python -m core train` start from "
                                                 "this trial's settings (undo: 'Back to the project's "
                                                 "defaults')."):
        studies.promote_best(name)
        forget_train_form()
        st.rerun()


def _log(name: str) -> None:
    log = studies.log_path(name)
    if log.exists():
        with st.expander("End of the search log"):
            st.code(log_tail.tail(log, 20), language=None)
