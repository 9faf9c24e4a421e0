"""Deployment cards: the one that deploys a run ("Use this model for
predictions"), shown on Evaluate for the run picked and on Predict for the
best run while nothing is deployed, and Predict's card of the model that
answers. Deploying loads the model in core, not here."""
from __future__ import annotations

import streamlit as st

from core.inference import deploy, external
from core.inference.calibration import percent
from ui import navigation
from ui.external import completed_sets
from ui.first_model import BUTTON as FIRST_MODEL_STEP
from ui.formatting import fmt
from ui.glossary import explain
from ui.runs import all_runs, run_calibration, run_label


def deploy_controls(run: dict, key: str) -> None:
    """"Use this model for predictions" for `run`. A run with problems
    (core.inference.deploy.problems: subset, not completed, below the quality floor)
    gets the reasons and a confirmation box first; the button waits for it."""
    record = deploy.deployed_record() or {}
    if record.get("run") == run["id"]:
        st.success(f"This model answers on Predict (deployed {record.get('deployed_at', '')}).",
                   icon=":material/check_circle:")
        return
    found = deploy.problems(run)
    confirmed = _confirmed_despite(found, key)
    if st.button("Use this model for predictions", key=f"{key}_deploy", disabled=not confirmed,
                 icon=":material/rocket_launch:"):
        _deploy(run, force=bool(found) and confirmed)


def _confirmed_despite(found: list[str], key: str) -> bool:
    """True for a run without problems; else the reasons, and whether the user ticked that they know them."""
    if not found:
        return True
    st.warning("Not fit to answer for clinicians: " + "; ".join(found) + f". Quality floor: {deploy.FLOOR}.",
               icon=":material/block:")
    st.caption("What is the quality floor?", help=explain("Quality floor") + " " + explain("Smoke run"))
    return st.checkbox("Deploy it anyway: I know why it is not fit", key=f"{key}_confirm")


def _deploy(run: dict, force: bool) -> None:
    """Deploy the run (calibration and the out-of-distribution reference are
    prepared now) and say so, with a link to Predict."""
    with st.spinner("Preparing the model: calibration, and features of the training scans to recognise "
                    "inputs unlike them (about a minute for a full run)…"):
        try:
            deploy.deploy(run["id"], force=force)
        except (ValueError, OSError) as error:
            st.error(f"Not deployed: {error}")
            return
    st.success(f"Run {run['id']} now answers on Predict and in `python -m core predict`.")
    st.page_link(navigation.PREDICT, label="Go to Predict", icon=navigation.icon(navigation.PREDICT))


def nothing_deployed() -> None:
    """Predict's answer while no run is deployed: why, and the best run to deploy, if one is fit."""
    st.info("No model is deployed yet: one run must be chosen on purpose to answer here "
            "(Evaluate: *Use this model for predictions*, or `python -m core deploy RUN`).",
            icon=":material/info:")
    best = deploy.best_run(all_runs())
    if best is None:
        st.markdown("No completed run is fit to deploy (completed on the full data, above the quality floor: "
                    f"{deploy.FLOOR}). Home trains one and deploys it in one step; Evaluate reviews the runs.")
        # Straight to the step that ends here with an answer, not to Evaluate and then Train.
        st.page_link(navigation.HOME, label=FIRST_MODEL_STEP, icon=":material/rocket_launch:")
        st.page_link(navigation.EVALUATE, label="Go to Evaluate", icon=navigation.icon(navigation.EVALUATE))
        return
    st.markdown(f"The best completed run by validation ROC-AUC is **{run_label(best)}**.")
    deploy_controls(best, key="predict_best")


def deployed_model_card(run: dict) -> None:
    """Which model answers on Predict and how far to trust it: when it was
    trained and deployed, its test and external figures, its calibration."""
    record = deploy.deployed_record() or {}
    with st.container(border=True):
        trained = str(run["status"].get("updated_at", "?"))[:16].replace("T", " ")
        st.markdown(f"**Model answering:** {run_label(run)} · trained {trained} UTC · "
                    f"deployed {str(record.get('deployed_at', '?'))[:16].replace('T', ' ')} UTC")
        _test_figures(run)
        _external_figures(run)
        _calibration_note(run)
        if record.get("confirmed_despite"):
            st.warning("Deployed despite: " + "; ".join(record["confirmed_despite"]) + ".",
                       icon=":material/warning:")


def _test_figures(run: dict) -> None:
    test = deploy.test_figures(run)
    if test:
        low, high = (test.get("ci") or {}).get("roc_auc", [None, None])
        st.caption(f"Test split ({test.get('n')} scans): ROC-AUC {fmt(test.get('roc_auc'))} "
                   f"(95% CI {fmt(low)}–{fmt(high)}), sensitivity {fmt(test.get('recall'))}, "
                   f"specificity {fmt(test.get('specificity'))} at its threshold.")


def _external_figures(run: dict) -> None:
    """How the model did on scans from sources it never saw, or that it has not been tried on any."""
    complete = list(completed_sets(run).values())
    if complete:
        threshold = run_calibration(run).threshold  # quoted on the scale Predict's probabilities are on
        st.caption("External validation: " + "; ".join(external.summary_line(m, threshold) for m in complete) + ".")
    else:
        st.caption("External validation: none yet. A model checked only on its own test split can do far worse "
                   "on another hospital's scans; evaluate it on one from the Evaluate page.")


def _calibration_note(run: dict) -> None:
    calibration = run_calibration(run)
    low, high = calibration.borderline
    calibrated = (f"calibrated on the validation split ({calibration.method} scaling)" if calibration.method != "none"
                  else f"the model's own, not calibrated ({calibration.note})")
    st.caption(f"Probabilities are {calibrated}; the decision threshold is {percent(calibration.threshold)} on "
               "that scale. *Borderline*: between "
               f"{percent(low)} and {percent(high)}, where the threshold itself would have landed on 90% of "
               "resamples of the validation split.")
