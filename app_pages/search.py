"""Search: a hyperparameter search (core.training.tune, Optuna) over the Train form's
settings, its trials as they finish, and its best trial promoted to the
defaults. The worker runs in its own process (core.jobs.background.launch_search), so it
goes on when this tab is closed; this page reads its study."""
import dataclasses

import streamlit as st

from core.jobs import background
from core.runs import lock
from core.runs.train_config import TRAIN_FROM, TrainConfig
from core.training import search_space, studies
from ui import navigation
from ui.search_results import search_results
from ui.train_form import form_defaults, train_form_config

SEARCHED_RANGES = {"Learning rates": ("head_lr", "finetune_lr"), "Dropout": ("dropout",),
                   "Augmentation strength": ("augment_strength",)}


def form_config() -> tuple[TrainConfig, list[str]]:
    """The Train form's settings as last set in this session, and their problems."""
    defaults = form_defaults()
    try:
        config = train_form_config(defaults)
        problems = config.problems()
    except (TypeError, ValueError) as error:  # a form value of the wrong type
        config, problems = defaults, [str(error)]
    if problems:
        st.error("The Train form's settings need fixing before a new search starts:\n"
                 + "\n".join(f"- {p}" for p in problems))
    st.page_link(navigation.TRAIN, label="Settings: the Train page's form", icon=navigation.icon(navigation.TRAIN))
    return config, problems


def study_choice() -> tuple[str, int, bool]:
    """The study's name ("" when invalid), the trials wanted in total, and whether it exists."""
    existing = studies.list_studies()
    left, right = st.columns([3, 1])
    name = left.text_input("Study", value=existing[-1] if existing else "search", key="study_name",
                           persist_state="session",
                           help=f"Existing: {', '.join(existing) or 'none yet'}. "
                                "Letters, digits, '.', '_', '-'.").strip()
    n_trials = int(right.number_input("Trials in total", min_value=1, max_value=1000, value=20, step=1,
                                      key="study_trials", persist_state="session",
                                      help="Finished (completed or pruned) trials wanted in the study; "
                                           "a continued search runs only the missing ones."))
    exists = name in existing
    try:
        studies.check_study_name(name)
    except ValueError as error:
        st.error(str(error))
        name = ""
    return name, n_trials, exists


def space_choice(config: TrainConfig) -> dict:
    """The search space of a new study: the values searched for each choice, and the ranges ticked."""
    # The options are each setting's own: its choices where it has them, else its search space.
    choices = {"backbone": ("Backbones", search_space.loadable_backbones(config.weights)),
               "batch_size": ("Batch sizes", list(search_space.SPACE["batch_size"])),
               "input_size": ("Input sizes", list(search_space.SPACE["input_size"])),
               "train_from": ("Fine-tune from", list(TRAIN_FROM))}
    st.markdown("**Search space** (an empty list or an unticked box: the form's value is used)")
    # Two pickers a row: four side by side hide their chosen values at 1280 px.
    columns, space = st.columns(2), {}
    for i, (name, (label, options)) in enumerate(choices.items()):
        column = columns[i % 2]
        default = [o for o in search_space.SPACE[name] if o in options]
        chosen = column.multiselect(label, options, default=default, key=f"space_{name}", persist_state="session")
        if chosen:
            space[name] = sorted(chosen, key=options.index)
    # The ranges in a row of their own: beside the pickers their names were cut off at 1280 px.
    for column, (label, names) in zip(st.columns(len(SEARCHED_RANGES)), SEARCHED_RANGES.items()):
        ranges = ", ".join(f"{n} {search_space.SPACE[n]['low']:g}–{search_space.SPACE[n]['high']:g}" for n in names)
        if column.checkbox(label, value=True, key=f"space_{names[0]}", help=ranges,
                           persist_state="session"):
            space.update({n: search_space.SPACE[n] for n in names})
    return space


def start_button(study: str, n_trials: int, exists: bool, config: TrainConfig, problems: list[str],
                 space: dict):
    """Start (or continue) the search in the background; returns its worker, None when none runs.
    The form matters to a new study only; an existing one keeps its own settings."""
    worker = background.search_worker(study) if study else None
    left, right = st.columns([1, 3], vertical_alignment="center")
    if left.button("Start search", type="primary",
                   disabled=not study or worker is not None or bool(problems and not exists)):
        try:
            lock.refuse_if_training()
            base = {k: v for k, v in dataclasses.asdict(config).items()
                    if k not in search_space.searched_fields(space)}
            pid = background.launch_search(study, n_trials, **({} if exists else {"base": base, "space": space}))
        except (lock.TrainingBusy, ValueError, OSError) as error:
            right.error(f"Not started: {error}")
        else:
            right.success(f"Search {study} started in the background (process {pid}).")
            worker = background.search_worker(study)
    return worker


st.caption("Optuna (TPE sampler, median pruning) scores each trial on the **validation** ROC-AUC only. "
           "Every trial is a run (`<date>-<study>-t<n>`), listed on Evaluate. Settings not searched "
           "come from the Train page's form as last set in this session (else the defaults). The study "
           "is a file in artifacts/studies: stopping loses only the trial in progress, and starting it "
           "again continues it.")
config, problems = form_config()
study, n_trials, exists = study_choice()
if exists:
    st.caption(f"Study **{study}** exists: Start continues it with the settings and space it was created with.")
space = {} if exists else space_choice(config)
worker = start_button(study, n_trials, exists, config, problems, space)
if study:
    search_results(study, worker is not None)
