"""Train: every hyperparameter of core.runs.train_config.TrainConfig, a preview of the
augmentation, and a run started in the background and followed live. The
hyperparameter search has its own page (Search), which starts from this form.

The training runs in its own process (core.jobs.background.launch_training), so it goes
on when this tab is closed or reloaded; this page only reads the run folder.
"""
import os

import keras
import numpy as np
import streamlit as st

from core.data.images import model_input
from core.jobs import background
from core.runs import lock
from core.runs.train_config import TrainConfig
from core.runs.promoted import promoted_from, reset_default
from core.training import pipeline, presets
from ui.cache_keys import mtime
from ui.dataset_cache import load_index, read_image, training_images
from ui.formatting import fmt
from ui.glossary import explain
from ui.train_form import forget_train_form, form_defaults, settings_form
from ui.train_progress import live_progress


def presets_row(defaults: TrainConfig, n_train: int) -> None:
    """One button per preset, labelled with its estimate (the box's figure); each fills the form
    (a callback: widgets take new values before they are drawn)."""
    def apply_preset(name: str) -> None:
        for setting, value in presets.preset_config(name, defaults).items():
            st.session_state[f"cfg_{setting}"] = "" if value is None else value

    # One third of the page each: at 1280 px a narrower button cuts its name short.
    for column, preset in zip(st.columns(len(presets.PRESETS)), presets.PRESETS):
        column.button(presets.preset_label(preset, defaults, n_train), width="stretch",
                      key=f"preset_{preset.lower().replace(' ', '_')}",
                      help=presets.QUICK_LOOK_NOTE.capitalize() if preset == presets.QUICK_LOOK else None,
                      on_click=apply_preset, args=(preset,))
    st.caption(f"Presets fill the form. Quick look is {presets.QUICK_LOOK_NOTE}.", help=explain("Smoke run"))


def promoted_banner() -> None:
    """Where promoted defaults come from, with the way back to the project's own."""
    if promoted := promoted_from():
        left, right = st.columns([3, 1], vertical_alignment="center")
        left.info(f"Defaults promoted from study **{promoted['study']}**, trial {promoted['trial']} "
                  f"(validation ROC-AUC {fmt(promoted['val_roc_auc'])}, run {promoted['run']}).")
        if right.button("Back to the project's defaults"):
            reset_default()
            forget_train_form()
            st.rerun()


def problems_or_estimate(config: TrainConfig) -> list[str]:
    """The settings' problems (augmentation strengths included: Keras checks them building the layers),
    or, when there is none, the run's estimated time, memory and disk."""
    problems = config.problems()
    try:
        pipeline.augmentation(config)
    except ValueError as error:
        problems.append(f"augmentation: {error}")
    if problems:
        st.error("Fix these settings before starting:\n" + "\n".join(f"- {p}" for p in problems))
        return problems
    cost = presets.estimate(config, training_images(config.data_dir))
    st.info(f"Estimate for these settings on this machine: up to about **{presets.minutes_text(cost['minutes'])}** "
            f"(early stopping can end it sooner), **{cost['gigabytes']:.1f} GB** of memory and "
            f"{cost['cache_gigabytes']:.1f} GB of disk for the cache of frozen-layer outputs. Rough: scaled from "
            "the runs measured in docs/benchmarks.md; other work on the machine slows it.", icon=":material/timer:")
    return problems


@st.fragment
def augmentation_preview(config: TrainConfig):
    """A few training images through core.training.pipeline.augmentation with the
    settings above; its own fragment so a new draw does not rerun the form."""
    try:
        index = load_index(config.training_sources())
    except ValueError as error:
        st.info(f"No preview: {error}")
        return
    # Two images per class from the training split, the same ones every time.
    sample = index[index["split"] == "train"].groupby("label").head(2).sort_values("label")
    size = min(config.input_size, 256) if config.input_size >= 32 else 224
    # What the model sees: its lung view (cropped, masked, as the run asks), then resized.
    images = np.stack([model_input(read_image(p, n, mtime(p)), size, config.lung_crop, config.lung_mask)
                       for p, n in zip(sample["path"], sample["relpath"])])
    draw = st.session_state.setdefault("augmentation_draw", 0)
    try:
        augmented = keras.ops.convert_to_numpy(pipeline.augmentation(config, seed=draw)(
            images.astype("float32"), training=True))
    except ValueError as error:  # Keras refuses e.g. a contrast factor above 1
        st.info(f"No preview with these augmentation settings: {error}")
        return
    for column, original, changed, label in zip(st.columns(len(images)), images, augmented, sample["label"]):
        # Stretched to the column, so a small input size shows what the model sees.
        column.image(original, caption=f"{label}: original", width="stretch")
        column.image(np.clip(changed, 0, 255).astype("uint8"), caption="augmented", width="stretch")
    st.button("New random draw", on_click=lambda: st.session_state.update(augmentation_draw=draw + 1))


def start_section(config: TrainConfig, problems: list[str]) -> None:
    """The run's name and Start, which waits while another run trains."""
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    name = left.text_input("Run name (optional)", key="run_name", persist_state="session",
                           help="Added to the run id after the date; letters, digits, '.', '_', '-'.")
    training_now, training_alive = lock.current_training()
    if training_alive:
        left.caption(f"Run {training_now['id']} is training: Start comes back when it ends or is cancelled.")
    if right.button("Start training", type="primary", disabled=bool(problems) or training_alive):
        start(config, name.strip() or None)


def start(config: TrainConfig, name: str | None) -> None:
    """Launch the training process, unless a run started a moment ago is already up."""
    # The training process inherits this: its fit.log then gets each line when it is printed,
    # not in blocks, so the log below is live.
    os.environ["PYTHONUNBUFFERED"] = "1"
    try:
        lock.refuse_if_training()
        run_dir = background.launch_training(config, name=name)
    except (lock.TrainingBusy, ValueError, OSError) as error:
        st.error(f"Not started: {error}")
    else:
        st.success(f"Started run {run_dir.name} in the background. It keeps going if you "
                   "close this tab; come back here to follow it.")


st.caption("Every setting of a run (core.runs.train_config.TrainConfig); the defaults are the project's recipe. "
           "An ImageNet ResNet trains its new head on a frozen backbone first, then the stages "
           "from 'train from' up are fine-tuned at a lower learning rate.")
defaults = form_defaults()
presets_row(defaults, training_images(defaults.data_dir))
promoted_banner()
config = settings_form(defaults)
problems = problems_or_estimate(config)
with st.expander("Augmentation preview: four training images, original and augmented", expanded=True):
    augmentation_preview(config)
start_section(config, problems)
live_progress()
