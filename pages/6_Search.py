"""Search: a hyperparameter search (core.training.tune, Optuna) over the Train form's
settings, its trials as they finish, and its best trial promoted to the
defaults. The worker runs in its own process (core.jobs.background.launch_search), so it
goes on when this tab is closed; this page reads its study."""
import dataclasses

import plotly.express as px
import streamlit as st

import ui
from core.runs import lock
from core.jobs import background
from core.training import search_space
from core.training import studies
from core.runs.train_config import TRAIN_FROM, TrainConfig, load_default_config

ui.page_setup("Hyperparameter search")
st.caption("Optuna (TPE sampler, median pruning) scores each trial on the **validation** ROC-AUC only. "
           "Every trial is a run (`<date>-<study>-t<n>`), listed on Evaluate. Settings not searched "
           "come from the Train page's form as last set in this session (else the defaults). The study "
           "is a file in artifacts/studies: stopping loses only the trial in progress, and starting it "
           "again continues it.")
try:
    defaults = load_default_config()  # the project's recipe, or a search's promoted best
except ValueError as error:
    st.error(f"Promoted defaults ignored: {error}")
    defaults = TrainConfig()
try:
    config = ui.train_form_config(defaults)
    problems = config.problems()
except (TypeError, ValueError) as error:  # a form value of the wrong type
    config, problems = defaults, [str(error)]
if problems:
    st.error("The Train form's settings need fixing before a new search starts:\n"
             + "\n".join(f"- {p}" for p in problems))
st.page_link(ui.TRAIN, label="Settings: the Train page's form", icon=ui.icon(ui.TRAIN))

existing = studies.list_studies()
left, right = st.columns([3, 1])
study_name = left.text_input("Study", value=existing[-1] if existing else "search", key="study_name",
                             persist_state="session",
                             help=f"Existing: {', '.join(existing) or 'none yet'}. "
                                  "Letters, digits, '.', '_', '-'.").strip()
n_trials = int(right.number_input("Trials in total", min_value=1, max_value=1000, value=20, step=1,
                                  key="study_trials", persist_state="session",
                                  help="Finished (completed or pruned) trials wanted in the study; "
                                       "a continued search runs only the missing ones."))
exists = study_name in existing
try:
    studies.check_study_name(study_name)
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

worker = background.search_worker(study_name) if study_name else None
left, right = st.columns([1, 3], vertical_alignment="center")
# The form matters to a new study only; an existing one keeps its own settings.
if left.button("Start search", type="primary",
               disabled=not study_name or worker is not None or bool(problems and not exists)):
    try:
        busy, alive = lock.current_training()
        if alive:
            raise lock.TrainingBusy(f"training run {busy['id']} is running; wait for it or cancel it")
        base = {k: v for k, v in dataclasses.asdict(config).items() if k not in search_space.searched_fields(space)}
        pid = background.launch_search(study_name, n_trials, **({} if exists else {"base": base, "space": space}))
    except (lock.TrainingBusy, ValueError, OSError) as error:
        right.error(f"Not started: {error}")
    else:
        right.success(f"Search {study_name} started in the background (process {pid}).")
        worker = background.search_worker(study_name)


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
            studies.promote_best(name)
            ui.forget_train_form()
            st.rerun()
    log = studies.log_path(name)
    if log.exists():
        with st.expander("End of the search log"):
            st.code("\n".join(log.read_text(errors="replace").splitlines()[-20:]) or "(empty)", language=None)


if study_name:
    search_results(study_name, worker is not None)
