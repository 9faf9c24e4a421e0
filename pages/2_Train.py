"""Train: every hyperparameter of core.runs.train_config.TrainConfig, a preview of the
augmentation, and a run started in the background and followed live. The
hyperparameter search has its own page (Search), which starts from this form.

The training runs in its own process (core.jobs.background.launch_training), so it goes
on when this tab is closed or reloaded; this page only reads the run folder.
"""
import dataclasses
import os

import keras
import numpy as np
import streamlit as st

import ui
from core.runs import lock
from core.jobs import background
from core.training import presets
from core.training import pipeline
from core.runs.train_config import TrainConfig, load_default_config, promoted_from, reset_default
from core.data.images import model_input

# Three columns of sections; a TrainConfig field missing here lands in "Other".
LAYOUT = [
    {"Data": ["data_dir", "holdout_source", "positive_class", "use_official_splits", "max_images_per_split",
              "seed", "cv_folds", "cv_fold"],
     "Evaluation": ["threshold_method", "flip_tta"],
     "Devices": ["strategy"]},
    {"Model": ["backbone", "weights", "input_size", "lung_crop", "dropout", "train_from"],
     "Augmentation": ["rotation", "zoom", "contrast", "flip"]},
    {"Optimisation": ["batch_size", "head_epochs", "head_lr", "finetune_epochs", "finetune_lr",
                      "early_stopping_patience", "lr_patience"]},
]


def setting_widget(field: dataclasses.Field, default):
    """One widget per field, chosen by its type, labelled and explained by
    its metadata (core.runs.train_config); keys 'cfg_<name>' persist for the session so
    the form survives a visit to another page."""
    meta = field.metadata
    label, key = meta["label"], f"cfg_{field.name}"
    common = dict(key=key, help=meta["help"], persist_state="session")
    if "choices" in meta:
        options = list(meta["choices"])
        return st.selectbox(label, options, index=options.index(default), **common)
    if isinstance(default, bool):
        return st.checkbox(label, value=default, **common)
    if isinstance(default, int):
        return int(st.number_input(label, value=default, step=1, **common))
    if isinstance(default, float):
        return st.number_input(label, value=default, step=meta.get("step", 0.01), format="%g", **common)
    value = st.text_input(label, value=default or "", **common).strip()
    return value or (None if "None" in str(field.type) else value)


ui.page_setup("Train")
st.caption("Every setting of a run (core.runs.train_config.TrainConfig); the defaults are the project's recipe. "
           "An ImageNet ResNet trains its new head on a frozen backbone first, then the stages "
           "from 'train from' up are fine-tuned at a lower learning rate.")

def apply_preset(name: str) -> None:
    """Fill the form with a preset (a callback: widgets take new values before they are drawn)."""
    for setting, value in presets.preset_config(name, defaults).items():
        st.session_state[f"cfg_{setting}"] = "" if value is None else value


# --- Settings -------------------------------------------------------------------
try:
    defaults = load_default_config()  # the project's recipe, or a search's promoted best
except ValueError as error:
    st.error(f"Promoted defaults ignored: {error}")
    defaults = TrainConfig()
preset_columns = st.columns([1, 1, 1, 3], vertical_alignment="center")
for column, preset in zip(preset_columns, presets.PRESETS):
    column.button(preset, key=f"preset_{preset.split(' (')[0].lower().replace(' ', '_')}", width="stretch",
                  on_click=apply_preset, args=(preset,))
preset_columns[-1].caption("Presets fill the form: a quick look trains on 40 scans per split (a smoke run, "
                           "hidden from comparisons and not for predictions).")
if promoted := promoted_from():
    left, right = st.columns([3, 1], vertical_alignment="center")
    left.info(f"Defaults promoted from study **{promoted['study']}**, trial {promoted['trial']} "
              f"(validation ROC-AUC {ui.fmt(promoted['val_roc_auc'])}, run {promoted['run']}).")
    if right.button("Back to the project's defaults"):
        reset_default()
        ui.forget_train_form()
        st.rerun()
fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
placed = {name for column in LAYOUT for names in column.values() for name in names}
other = [name for name in fields if name not in placed]
layout = [dict(LAYOUT[0], **({"Other": other} if other else {})), *LAYOUT[1:]]

values = {}
for column, sections in zip(st.columns(len(layout)), layout):
    for title, names in sections.items():
        with column.container(border=True):
            st.markdown(f"**{title}**")
            for name in names:
                if name in fields:  # a field renamed in core is simply skipped
                    values[name] = setting_widget(fields[name], getattr(defaults, name))
config = TrainConfig(**values)

problems = config.problems()
try:  # problems() does not check the augmentation strengths; Keras does, building the layers
    pipeline.augmentation(config)
except ValueError as error:
    problems.append(f"augmentation: {error}")
if problems:
    st.error("Fix these settings before starting:\n" + "\n".join(f"- {p}" for p in problems))
else:
    try:
        n_train = int((ui.load_index(config.data_dir)["split"] == "train").sum())
    except ValueError:
        n_train = presets.REFERENCE_TRAIN_IMAGES
    cost = presets.estimate(config, n_train)
    st.info(f"Estimate for these settings on this machine: up to about **{cost['minutes']:.0f} min** "
            f"(early stopping can end it sooner), **{cost['gigabytes']:.1f} GB** of memory and "
            f"{cost['cache_gigabytes']:.1f} GB of disk for the cache of frozen-layer outputs. Rough: scaled from "
            "the runs measured in docs/benchmarks.md; other work on the machine slows it.", icon=":material/timer:")


# --- Augmentation preview -------------------------------------------------------
@st.fragment
def augmentation_preview(config: TrainConfig):
    """A few training images through core.training.pipeline.augmentation_layers with the
    settings above; its own fragment so a new draw does not rerun the form."""
    try:
        index = ui.load_index(config.training_sources())
    except ValueError as error:
        st.info(f"No preview: {error}")
        return
    # Two images per class from the training split, the same ones every time.
    sample = index[index["split"] == "train"].groupby("label").head(2).sort_values("label")
    size = min(config.input_size, 256) if config.input_size >= 32 else 224
    # What the model sees: cropped to the lung fields when the run crops, then resized.
    images = np.stack([model_input(ui.read_image(p, n, ui.mtime(p)), size, config.lung_crop)
                       for p, n in zip(sample["path"], sample["relpath"])])
    draw = st.session_state.setdefault("augmentation_draw", 0)
    try:
        augment = pipeline.augmentation(config, seed=draw)
        augmented = keras.ops.convert_to_numpy(augment(images.astype("float32"), training=True))
    except ValueError as error:  # Keras refuses e.g. a contrast factor above 1
        st.info(f"No preview with these augmentation settings: {error}")
        return
    columns = st.columns(len(images))
    for column, original, changed, label in zip(columns, images, augmented, sample["label"]):
        # Stretched to the column, so a small input size shows what the model sees.
        column.image(original, caption=f"{label}: original", width="stretch")
        column.image(np.clip(changed, 0, 255).astype("uint8"), caption="augmented", width="stretch")
    st.button("New random draw", on_click=lambda: st.session_state.update(augmentation_draw=draw + 1))


with st.expander("Augmentation preview: four training images, original and augmented", expanded=True):
    augmentation_preview(config)

# --- Start ----------------------------------------------------------------------
left, right = st.columns([3, 1], vertical_alignment="bottom")
name = left.text_input("Run name (optional)", key="run_name", persist_state="session",
                       help="Added to the run id after the date; letters, digits, '.', '_', '-'.")
training_now, training_alive = lock.current_training()
if training_alive:
    left.caption(f"Run {training_now['id']} is training: Start comes back when it ends or is cancelled.")
if right.button("Start training", type="primary", disabled=bool(problems) or training_alive):
    # The training process inherits this: its fit.log then gets each line
    # when it is printed, not in blocks, so the log below is live.
    os.environ["PYTHONUNBUFFERED"] = "1"
    try:
        # launch_training checks the training lock, which a run started a
        # moment ago takes only once its process is up: check its status too.
        busy, alive = lock.current_training()
        if alive:
            raise lock.TrainingBusy(f"training run {busy['id']} is already running; "
                                    "wait for it to finish or cancel it")
        run_dir = background.launch_training(config, name=name.strip() or None)
    except (lock.TrainingBusy, ValueError, OSError) as error:
        st.error(f"Not started: {error}")
    else:
        st.success(f"Started run {run_dir.name} in the background. It keeps going if you "
                   "close this tab; come back here to follow it.")


# --- Live progress ----------------------------------------------------------------
_, alive_at_start = lock.current_training()


# Refresh on its own every 2 s while a run is alive; a full rerun once it ends
# turns the refreshing off again.
@st.fragment(run_every=2 if alive_at_start else None)
def progress():
    run, alive = lock.current_training()
    if alive_at_start and not alive:
        st.rerun()
    st.subheader("Progress")
    if run is None:
        st.info("No run yet: choose the settings above and start one.")
        return
    status = run["status"]
    state = status.get("state", "?")
    phase = f", phase *{status['phase']}*" if state == "running" and status.get("phase") else ""
    if state == "running" and (run["path"] / "cancel").exists():
        # The run checks for the request between training steps: loading, caching and evaluating
        # finish first, so say that it is stopping rather than plain "running".
        state = "cancelling (stops at its next training step)"
    st.markdown(f"**{run['id']}** — {state}{phase}")
    if status.get("state") == "running":
        steps, batch = status.get("steps") or 0, status.get("batch") or 0
        if steps:
            st.progress(min(batch / steps, 1.0),
                        text=f"epoch {status.get('epoch')}/{status.get('epochs')} · batch {batch}/{steps}")
        if st.button("Cancel this run", disabled=(run["path"] / "cancel").exists()):
            background.request_cancel(run["path"])
            st.info("Cancel requested: the run stops after its current batch.")
    elif state == "completed":
        st.success(f"Completed in {status.get('train_seconds', '?')} s.")
        st.page_link(ui.EVALUATE, label="Evaluate it", icon=ui.icon(ui.EVALUATE))
    elif state == "pruned":
        st.info(f"Trial run pruned by the hyperparameter search: {status.get('reason', '')}")
    elif state == "interrupted":
        st.warning("Run interrupted: its process ended without finishing (killed, or the machine "
                   "restarted).")
    else:
        st.warning(f"Run {state}: {status.get('reason', 'no reason recorded')}")

    frame = ui.history(run)
    if len(frame):
        st.plotly_chart(ui.history_figure(frame))
    log = run["path"] / "fit.log"
    if log.exists():
        st.caption("End of fit.log")
        st.code("\n".join(log.read_text(errors="replace").splitlines()[-15:]) or "(empty)",
                language=None)


progress()
