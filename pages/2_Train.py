"""Train: every hyperparameter of core.train.TrainConfig, a preview of the
augmentation, and a run started in the background and followed live.

The training runs in its own process (core.train.launch_training), so it goes
on when this tab is closed or reloaded; this page only reads the run folder.
"""
import dataclasses
import os

import keras
import numpy as np
import streamlit as st

import ui
from core import data, runs, train
from core.model import BACKBONES, TRAIN_FROM

CHOICES = {"backbone": list(BACKBONES), "train_from": list(TRAIN_FROM),
           "optimizer": list(train.OPTIMIZERS), "threshold_method": ["youden", "f1"]}
# Three columns of sections; a TrainConfig field missing here lands in "Other".
LAYOUT = [
    {"Data": ["data_dir", "positive_class", "use_official_splits", "max_images_per_split", "seed"],
     "Evaluation": ["threshold_method", "n_boot", "flip_tta"]},
    {"Model": ["backbone", "weights", "input_size", "dropout", "train_from", "train_batchnorm"],
     "Augmentation": ["rotation", "zoom", "contrast", "flip"]},
    {"Optimisation": ["batch_size", "optimizer", "head_epochs", "head_lr", "finetune_epochs",
                      "finetune_lr", "label_smoothing", "class_weights",
                      "early_stopping_patience", "lr_patience", "cache_frozen", "cached_views"]},
]
HELP = {
    "data_dir": "Folder with one sub-folder per class (and splits/, meta/).",
    "positive_class": "The class folder predicted as positive.",
    "use_official_splits": "Use the split lists in splits/; off: split by patient, stratified by class.",
    "max_images_per_split": "0 = all images; a small number for a quick smoke run.",
    "weights": "ImageNet weights file; empty = random initialisation.",
    "input_size": "Images are resized to this square size (pixels).",
    "train_from": "Fine-tuning trains the ResNet stages from this one up ('head': the head only).",
    "train_batchnorm": "Also train BatchNorm layers of the unfrozen stages (noisy on small batches).",
    "head_epochs": "Phase 1: the new head on a frozen backbone.",
    "finetune_epochs": "Phase 2: unfrozen stages at the lower learning rate.",
    "class_weights": "Weight classes inversely to their frequency in the training split.",
    "early_stopping_patience": "Fine-tuning stops after this many epochs without a better validation AUC.",
    "lr_patience": "Halve the learning rate after this many epochs without a better validation AUC.",
    "rotation": "Random rotation, ± degrees (0 = off).",
    "zoom": "Random zoom, ± fraction (0 = off).",
    "contrast": "Random contrast, ± fraction (0 = off).",
    "flip": "Random horizontal flip.",
    "threshold_method": "How the operating threshold is chosen on validation: Youden's J or best F1.",
    "n_boot": "Bootstrap resamples for the 95% confidence intervals.",
    "flip_tta": "Average each prediction with that of the mirrored scan (test-time augmentation).",
    "cache_frozen": "Run the frozen stages once and train on their cached activations (much faster).",
    "cached_views": "Augmented views of each training image in that cache.",
}
STEPS = {"head_lr": 1e-4, "finetune_lr": 1e-5, "dropout": 0.05, "label_smoothing": 0.05,
         "rotation": 1.0, "zoom": 0.05, "contrast": 0.05}


def setting_widget(field: dataclasses.Field, default):
    """One widget per field, chosen by its type; keys 'cfg_<name>' persist
    for the session so the form survives a visit to another page."""
    label, key = field.name.replace("_", " ").capitalize(), f"cfg_{field.name}"
    common = dict(key=key, help=HELP.get(field.name), persist_state="session")
    if field.name in CHOICES:
        options = CHOICES[field.name]
        return st.selectbox(label, options, index=options.index(default), **common)
    if isinstance(default, bool):
        return st.checkbox(label, value=default, **common)
    if isinstance(default, int):
        return int(st.number_input(label, value=default, step=1, **common))
    if isinstance(default, float):
        return st.number_input(label, value=default, step=STEPS.get(field.name, 0.01),
                               format="%g", **common)
    value = st.text_input(label, value=default or "", **common).strip()
    return value or (None if "None" in str(field.type) else value)


def current_run() -> tuple[dict | None, bool]:
    """(run, alive): the run being trained now, else the newest run. A run
    launched a moment ago counts as alive before its process takes the
    training lock (it is 'running' with a live pid from the start)."""
    listed = runs.list_runs()
    holder = runs.active_training() or {}
    running = [r for r in listed if r["id"] == holder.get("run")] or \
              [r for r in listed if r["status"].get("state") == "running"]
    if running:
        return running[0], True
    return (listed[0] if listed else None), False


ui.page_setup("Train")
st.caption("Every setting of a run (core.train.TrainConfig); the defaults are the project's recipe. "
           "An ImageNet ResNet trains its new head on a frozen backbone first, then the stages "
           "from 'train from' up are fine-tuned at a lower learning rate.")

# --- Settings -------------------------------------------------------------------
defaults = train.TrainConfig()
fields = {f.name: f for f in dataclasses.fields(train.TrainConfig)}
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
config = train.TrainConfig(**values)

problems = config.problems()
try:  # problems() does not check the augmentation strengths; Keras does, building the layers
    data.augmentation_layers(config.rotation, config.zoom, config.contrast, config.flip)
except ValueError as error:
    problems.append(f"augmentation: {error}")
if problems:
    st.error("Fix these settings before starting:\n" + "\n".join(f"- {p}" for p in problems))


# --- Augmentation preview -------------------------------------------------------
@st.fragment
def augmentation_preview(config: train.TrainConfig):
    """A few training images through core.data.augmentation_layers with the
    settings above; its own fragment so a new draw does not rerun the form."""
    try:
        index = ui.load_index(config.data_dir)
    except ValueError as error:
        st.info(f"No preview: {error}")
        return
    # Two images per class from the training split, the same ones every time.
    sample = index[index["split"] == "train"].groupby("label").head(2).sort_values("label")
    size = min(config.input_size, 256) if config.input_size >= 32 else 224
    images = np.stack([data.resize_image(ui.read_image(p, n, ui.mtime(p)), size)
                       for p, n in zip(sample["path"], sample["relpath"])])
    draw = st.session_state.setdefault("augmentation_draw", 0)
    try:
        augment = data.augmentation_layers(config.rotation, config.zoom, config.contrast,
                                           config.flip, seed=draw)
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
if right.button("Start training", type="primary", disabled=bool(problems)):
    # The training process inherits this: its train.log then gets each line
    # when it is printed, not in blocks, so the log below is live.
    os.environ["PYTHONUNBUFFERED"] = "1"
    try:
        # launch_training checks the training lock, which a run started a
        # moment ago takes only once its process is up: check its status too.
        busy, alive = current_run()
        if alive:
            raise runs.TrainingBusy(f"training run {busy['id']} is already running; "
                                    "wait for it to finish or cancel it")
        run_dir = train.launch_training(config, name=name.strip() or None)
    except (runs.TrainingBusy, ValueError, OSError) as error:
        st.error(f"Not started: {error}")
    else:
        st.success(f"Started run {run_dir.name} in the background. It keeps going if you "
                   "close this tab; come back here to follow it.")


# --- Live progress ----------------------------------------------------------------
_, alive_at_start = current_run()


# Refresh on its own every 2 s while a run is alive; a full rerun once it ends
# turns the refreshing off again.
@st.fragment(run_every=2 if alive_at_start else None)
def progress():
    run, alive = current_run()
    if alive_at_start and not alive:
        st.rerun()
    st.subheader("Progress")
    if run is None:
        st.info("No run yet: choose the settings above and start one.")
        return
    status = run["status"]
    state = status.get("state", "?")
    phase = f", phase *{status['phase']}*" if state == "running" and status.get("phase") else ""
    st.markdown(f"**{run['id']}** — {state}{phase}")
    if state == "running":
        steps, batch = status.get("steps") or 0, status.get("batch") or 0
        if steps:
            st.progress(min(batch / steps, 1.0),
                        text=f"epoch {status.get('epoch')}/{status.get('epochs')} · batch {batch}/{steps}")
        if st.button("Cancel this run", disabled=(run["path"] / "cancel").exists()):
            runs.request_cancel(run["path"])
            st.info("Cancel requested: the run stops after its current batch.")
    elif state == "completed":
        st.success(f"Completed in {status.get('train_seconds', '?')} s.")
        st.page_link(ui.EVALUATE, label="Evaluate it", icon=":material/monitoring:")
    elif state == "interrupted":
        st.warning("Run interrupted: its process ended without finishing (killed, or the machine "
                   "restarted).")
    else:
        st.warning(f"Run {state}: {status.get('reason', 'no reason recorded')}")

    frame = ui.history(run)
    if len(frame):
        st.plotly_chart(ui.history_figure(frame))
    log = run["path"] / "train.log"
    if log.exists():
        st.caption("End of train.log")
        st.code("\n".join(log.read_text(errors="replace").splitlines()[-15:]) or "(empty)",
                language=None)


progress()
