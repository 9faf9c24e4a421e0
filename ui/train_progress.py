"""The Train page's live view of the latest run: its state and progress bar,
Cancel while it runs, its learning curves and the end of its log. The run
trains in its own process; this only reads its folder."""
from __future__ import annotations

import streamlit as st

from core.jobs import background, log_tail
from core.runs import lock
from ui import charts, navigation
from ui.formatting import minutes
from ui.runs import history


def live_progress() -> None:
    """The latest run, refreshed on its own every 2 s while a run is alive; a
    full rerun once it ends turns the refreshing off again."""
    _, alive_at_start = lock.current_training()
    st.fragment(_progress, run_every=2 if alive_at_start else None)(alive_at_start)


def _progress(alive_at_start: bool) -> None:
    run, alive = lock.current_training()
    if alive_at_start and not alive:
        st.rerun()
    st.subheader("Progress")
    if run is None:
        st.info("No run yet: choose the settings above and start one.")
        return
    _state(run)
    _curves_and_log(run)


def _state(run: dict) -> None:
    """The run's state line, then a progress bar and Cancel while it runs, or how it ended."""
    status = run["status"]
    state = status.get("state", "?")
    phase = f", phase *{status['phase']}*" if state == "running" and status.get("phase") else ""
    if state == "running" and (run["path"] / "cancel").exists():
        # The run checks for the request between training steps: loading, caching and evaluating
        # finish first, so say that it is stopping rather than plain "running".
        state = "cancelling (stops at its next training step)"
    st.markdown(f"**{run['id']}** — {state}{phase}")
    if status.get("state") == "running":
        _running(run)
    else:
        _ended(status, state)


def _running(run: dict) -> None:
    status = run["status"]
    steps, batch = status.get("steps") or 0, status.get("batch") or 0
    if steps:
        st.progress(min(batch / steps, 1.0),
                    text=f"epoch {status.get('epoch')}/{status.get('epochs')} · batch {batch}/{steps}")
    if st.button("Cancel this run", disabled=(run["path"] / "cancel").exists()):
        background.request_cancel(run["path"])
        st.info("Cancel requested: the run stops after its current batch.")


def _ended(status: dict, state: str) -> None:
    if state == "completed":
        st.success(f"Completed in {minutes(status.get('train_seconds'))}.")
        st.page_link(navigation.EVALUATE, label="Evaluate it", icon=navigation.icon(navigation.EVALUATE))
    elif state == "pruned":
        st.info(f"Trial run pruned by the hyperparameter search: {status.get('reason', '')}")
    elif state == "interrupted":
        st.warning("Run interrupted: its process ended without finishing (killed, or the machine "
                   "restarted).")
    else:
        st.warning(f"Run {state}: {status.get('reason', 'no reason recorded')}")


def _curves_and_log(run: dict) -> None:
    frame = history(run)
    if len(frame):
        st.plotly_chart(charts.history(frame))
    log = run["path"] / "fit.log"
    if log.exists():
        st.caption("End of fit.log")
        st.code(log_tail.tail(log, 15), language=None)
