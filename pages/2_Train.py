"""Train: every hyperparameter of core.config.TrainConfig, a preview of the
augmentation, a run started in the background and followed live, and a
hyperparameter search (core.tune) whose best trial can become the defaults.

The training runs in its own process (core.jobs.launch_training), so it goes
on when this tab is closed or reloaded; this page only reads the run folder.
A search worker (core.jobs.launch_search) likewise; the page reads its study.
"""
import dataclasses
import os

import keras
import numpy as np
import plotly.express as px
import streamlit as st

import ui
from core import jobs, presets, runs, search_space, train, tune
from core.config import TrainConfig, load_default_config, promoted_from, reset_default
from core.model import TRAIN_FROM
from core.images import model_input

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
    its metadata (core.config); keys 'cfg_<name>' persist for the session so
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


def current_run() -> tuple[dict | None, bool]:
    """(run, alive): the run being trained now, else the newest run. A run
    launched a moment ago counts as alive before its process takes the
    training lock (it is 'running' with a live pid from the start)."""
    listed = runs.list_runs()
    holder = jobs.active_training() or {}
    running = [r for r in listed if r["id"] == holder.get("run")] or \
              [r for r in listed if r["status"].get("state") == "running"]
    if running:
        return running[0], True
    return (listed[0] if listed else None), False


ui.page_setup("Train")
st.caption("Every setting of a run (core.config.TrainConfig); the defaults are the project's recipe. "
           "An ImageNet ResNet trains its new head on a frozen backbone first, then the stages "
           "from 'train from' up are fine-tuned at a lower learning rate.")

def forget_form() -> None:
    """Drop the form's values, so that it shows the (new) defaults."""
    for key in [k for k in st.session_state if str(k).startswith("cfg_")]:
        del st.session_state[key]


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
        forget_form()
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
    train.augmentation(config)
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
            f"(early stopping can end it sooner) and **{cost['gigabytes']:.1f} GB** of memory "
            f"({cost['cache_gigabytes']:.1f} GB of it the cache of frozen-layer outputs). Rough: scaled from "
            "the runs measured in docs/benchmarks.md; other work on the machine slows it.", icon=":material/timer:")


# --- Augmentation preview -------------------------------------------------------
@st.fragment
def augmentation_preview(config: TrainConfig):
    """A few training images through core.pipeline.augmentation_layers with the
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
        augment = train.augmentation(config, seed=draw)
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
training_now, training_alive = current_run()
if training_alive:
    left.caption(f"Run {training_now['id']} is training: Start comes back when it ends or is cancelled.")
if right.button("Start training", type="primary", disabled=bool(problems) or training_alive):
    # The training process inherits this: its train.log then gets each line
    # when it is printed, not in blocks, so the log below is live.
    os.environ["PYTHONUNBUFFERED"] = "1"
    try:
        # launch_training checks the training lock, which a run started a
        # moment ago takes only once its process is up: check its status too.
        busy, alive = current_run()
        if alive:
            raise jobs.TrainingBusy(f"training run {busy['id']} is already running; "
                                    "wait for it to finish or cancel it")
        run_dir = jobs.launch_training(config, name=name.strip() or None)
    except (jobs.TrainingBusy, ValueError, OSError) as error:
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
            jobs.request_cancel(run["path"])
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
    log = run["path"] / "train.log"
    if log.exists():
        st.caption("End of train.log")
        st.code("\n".join(log.read_text(errors="replace").splitlines()[-15:]) or "(empty)",
                language=None)


progress()


# --- Hyperparameter search ------------------------------------------------------------
st.divider()
st.subheader("Hyperparameter search")
st.caption("Optuna (TPE sampler, median pruning) scores each trial on the **validation** ROC-AUC only. "
           "Every trial is a run (`<date>-<study>-t<n>`), listed on Evaluate. Settings not searched "
           "come from the form above. The study is a file in artifacts/studies: stopping loses only "
           "the trial in progress, and starting it again continues it.")
studies = tune.list_studies()
left, right = st.columns([3, 1])
study_name = left.text_input("Study", value=studies[-1] if studies else "search", key="study_name",
                             persist_state="session",
                             help=f"Existing: {', '.join(studies) or 'none yet'}. "
                                  "Letters, digits, '.', '_', '-'.").strip()
n_trials = int(right.number_input("Trials in total", min_value=1, max_value=1000, value=20, step=1,
                                  key="study_trials", persist_state="session",
                                  help="Finished (completed or pruned) trials wanted in the study; "
                                       "a continued search runs only the missing ones."))
exists = study_name in studies
try:
    tune.check_study_name(study_name)
except ValueError as error:
    st.error(str(error))
    study_name = ""

SEARCHED_CHOICES = {"backbone": ("Backbones", search_space.loadable_backbones(config.weights)),
                    "batch_size": ("Batch sizes", [8, 16, 32, 64]),
                    "input_size": ("Input sizes", [128, 160, 192, 224, 256, 288, 320]),
                    "train_from": ("Fine-tune from", list(TRAIN_FROM))}
SEARCHED_RANGES = {"Learning rates": ("head_lr", "finetune_lr"), "Dropout": ("dropout",),
                   "Augmentation strength": ("augment_strength",)}
space = {}
if exists:
    st.caption(f"Study **{study_name}** exists: Start continues it with the settings and space it was "
               "created with.")
else:
    st.markdown("**Search space** (an empty list or an unticked box: the form's value is used)")
    columns = st.columns(len(SEARCHED_CHOICES) + 1)
    for column, (name, (label, options)) in zip(columns, SEARCHED_CHOICES.items()):
        default = [o for o in search_space.SPACE[name] if o in options]
        chosen = column.multiselect(label, options, default=default, key=f"space_{name}", persist_state="session")
        if chosen:
            space[name] = sorted(chosen, key=options.index)
    for label, names in SEARCHED_RANGES.items():
        ranges = ", ".join(f"{n} {search_space.SPACE[n]['low']:g}–{search_space.SPACE[n]['high']:g}" for n in names)
        if columns[-1].checkbox(label, value=True, key=f"space_{names[0]}", help=ranges,
                                persist_state="session"):
            space.update({n: search_space.SPACE[n] for n in names})

worker = jobs.search_worker(study_name) if study_name else None
left, right = st.columns([1, 3], vertical_alignment="center")
# The form matters to a new study only; an existing one keeps its own settings.
if left.button("Start search", type="primary",
               disabled=not study_name or worker is not None or bool(problems and not exists)):
    try:
        busy, alive = current_run()
        if alive:
            raise jobs.TrainingBusy(f"training run {busy['id']} is running; wait for it or cancel it")
        base = {k: v for k, v in dataclasses.asdict(config).items() if k not in search_space.searched_fields(space)}
        pid = jobs.launch_search(study_name, n_trials, **({} if exists else {"base": base, "space": space}))
    except (jobs.TrainingBusy, ValueError, OSError) as error:
        right.error(f"Not started: {error}")
    else:
        right.success(f"Search {study_name} started in the background (process {pid}).")
        worker = jobs.search_worker(study_name)


def styled_trials(table, best):
    """The trials table with the best trial's row in colour and readable numbers."""
    colour = ["background-color: rgba(46, 160, 67, 0.35)"] * len(table.columns)
    styler = table.style.apply(lambda row: colour if best and row["trial"] == best.number else [""] * len(row),
                               axis=1)
    rates = [c for c in ("head_lr", "finetune_lr") if c in table]
    return styler.format(precision=3, na_rep="").format("{:.1e}", subset=rates, na_rep="")


@st.fragment(run_every=3 if worker else None)
def search_results(name: str, worker_at_start: bool):
    """The study's trials (the best in colour), a chart, Stop and Promote."""
    try:
        study = tune.load_study(name)
    except ValueError:
        st.info("No study by this name yet: choose the space and start one.")
        return
    table, best, worker = tune.trials_table(study), tune.best_trial(study), jobs.search_worker(name)
    if worker_at_start and not worker:
        st.rerun()  # the search ended: redraw the page once, without refreshing
    finished = int(table["state"].isin(["complete", "pruned"]).sum()) if len(table) else 0
    state = f"running in process {worker['pid']}" if worker else "no search running"
    st.markdown(f"**{name}**: {finished} finished trial(s) of {len(table)}, {state}.")
    if worker and st.button("Stop search"):
        jobs.stop_search(name)
        st.info("Stop requested: the trial in progress is cancelled and recorded as failed.")
    scored = table.dropna(subset=["val_roc_auc"])
    if len(scored):
        figure = px.scatter(scored, x="trial", y="val_roc_auc", color="state", hover_data=["run"],
                            title="Validation ROC-AUC by trial")
        figure.add_scatter(x=scored["trial"], y=scored["val_roc_auc"].cummax(), mode="lines",
                           line_shape="hv", name="best so far", line_color="gray")
        figure.update_layout(height=300, margin={"t": 40, "b": 10, "l": 10, "r": 10})
        st.plotly_chart(figure)
    if len(table):
        st.dataframe(styled_trials(table, best), hide_index=True)
    if best is not None:
        st.success(f"Best: trial {best.number}, validation ROC-AUC {best.value:.3f} "
                   f"(run {best.user_attrs.get('run')}).")
        if st.button("Promote best to default", help="The Train form and `python -m core train` start from "
                                                     "this trial's settings (undo: 'Back to the project's "
                                                     "defaults')."):
            tune.promote_best(name)
            forget_form()
            st.rerun()
    log = tune.log_path(name)
    if log.exists():
        with st.expander("End of the search log"):
            st.code("\n".join(log.read_text(errors="replace").splitlines()[-20:]) or "(empty)", language=None)


if study_name:
    search_results(study_name, worker is not None)
