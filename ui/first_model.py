"""Home's first step for a newcomer: "Train and use a first model". One
button trains the Fast recipe in the background (core.jobs.first_model);
this card follows it, with its time left, until its own process has deployed
it, or says plainly why it was not. Shown while no model is deployed, and
while the first model is on its way. No TensorFlow: it only reads files."""
from __future__ import annotations

import streamlit as st

from core.inference import deploy
from core.jobs import background, first_model
from core.runs import lock
from core.training import presets
from ui import navigation
from ui.runs import all_runs

BUTTON = "Train and use a first model"


def first_model_step(n_train: int) -> None:
    """The card, refreshed every 2 s while its run trains or deploys; nothing
    once a model answers on Predict and the first model is not on its way."""
    run = first_model.latest(all_runs())
    busy = run is not None and first_model.stage(run) in ("training", "deploying")
    if not busy and deploy.deployed_run() is not None and (run is None or first_model.stage(run) != "deployed"):
        return
    st.fragment(_card, run_every=2 if busy else None)(n_train, busy)


def _card(n_train: int, busy_at_start: bool) -> None:
    run = first_model.latest(all_runs())
    stage = first_model.stage(run) if run else None
    if busy_at_start and stage not in ("training", "deploying"):
        st.rerun()  # a full rerun: the page turns the refreshing off and the rest of Home catches up
    with st.container(border=True):
        st.markdown(f"#### {BUTTON}")
        if stage == "training":
            _training(run, n_train)
        elif stage == "deploying":
            st.info(f"Run {run['id']} is trained: preparing it for Predict (calibration, and the features of "
                    "the training slices that recognise inputs unlike them)…", icon=":material/hourglass_top:")
        elif stage == "deployed":
            st.success(f"Your first model (run {run['id']}) answers on Predict.", icon=":material/check_circle:")
            st.page_link(navigation.PREDICT, label="Go to Predict", icon=navigation.icon(navigation.PREDICT))
        else:
            if run is not None:
                _ended(run, stage)
            _start_button(n_train)


def _start_button(n_train: int) -> None:
    """What the button does and costs, and the button (disabled while another training runs)."""
    try:
        config = first_model.recipe()
    except ValueError as error:  # a malformed $COVIDCT_FIRST_MODEL_RECIPE
        st.error(f"The first model's recipe cannot be read: {error}")
        return
    minutes = presets.minutes_text(presets.estimate(config, n_train)["minutes"])
    st.markdown(f"No model answers on Predict yet. One click trains the *{presets.FAST}* recipe "
                f"({config.backbone}, {config.input_size} px: {presets.FAST_NOTE}) in the background, "
                f"**up to about {minutes}** on this machine, and deploys it when it passes the quality floor: "
                f"{deploy.FLOOR}. You can close this tab meanwhile; the *Default* preset on Train trains the "
                "better model later.")
    training_now, alive = lock.current_training()
    if alive:
        st.caption(f"Run {training_now['id']} is training: the button comes back when it ends (Train follows it).")
    if st.button(BUTTON, type="primary", icon=":material/rocket_launch:", disabled=alive, key="first_model_start"):
        try:
            run_dir = first_model.start()
        except (lock.TrainingBusy, ValueError, OSError) as error:
            st.error(f"Not started: {error}")
            return
        st.toast(f"Started run {run_dir.name}")
        st.rerun()  # the card now follows the run, refreshing itself


def _training(run: dict, n_train: int) -> None:
    """Progress bar, phase, time spent and time left (at most: early stopping can end it sooner), Cancel."""
    status = run["status"]
    done = first_model.progress(run, n_train)
    phase = status.get("phase") or "starting"
    if phase in ("head", "finetune"):
        phase = (f"{'training the new classifier' if phase == 'head' else 'fine-tuning'}, "
                 f"epoch {status.get('epoch')}/{status.get('epochs')}")
    st.progress(done["fraction"], text=f"Run {run['id']}: {phase}")
    st.markdown(f"**About {presets.minutes_text(done['remaining'] / 60)} left** "
                f"({int(done['elapsed'] // 60)}:{int(done['elapsed'] % 60):02d} so far; early stopping can end "
                "it sooner). "
                "It deploys itself when it passes the quality floor; you can close this tab.")
    if st.button("Cancel", key="first_model_cancel", disabled=(run["path"] / "cancel").exists()):
        background.request_cancel(run["path"])
        st.info("Cancel requested: the run stops after its current batch.")


def _ended(run: dict, stage: str) -> None:
    """Why the last first model does not answer on Predict."""
    if stage == "not deployed":
        found = deploy.problems(run)
        if found:
            st.warning(f"Run {run['id']} trained, but it is **not fit to answer**, so it was not deployed: "
                       + "; ".join(found) + f". Quality floor: {deploy.FLOOR}. Evaluate shows its figures; "
                       "training it again with another seed, or the Thorough preset on Train, may pass.",
                       icon=":material/block:")
        else:
            st.warning(f"Run {run['id']} passed the quality floor but was not deployed: the end of its "
                       f"train.log in {run['path']} says why. Evaluate can deploy it.", icon=":material/warning:")
        st.page_link(navigation.EVALUATE, label="Go to Evaluate", icon=navigation.icon(navigation.EVALUATE))
    else:
        reason = run["status"].get("reason") or "no reason recorded"
        st.warning(f"Run {run['id']} did not finish ({stage}: {reason}). Start again below.",
                   icon=":material/warning:")
