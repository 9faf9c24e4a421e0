"""The Train form: one widget per TrainConfig field, laid out in three
columns of sections. Its values live in session state under 'cfg_<name>',
so the form survives a visit to another page, and the Search page starts a
search from them."""
from __future__ import annotations

import dataclasses

import streamlit as st

from core.runs.train_config import TrainConfig
from core.runs.promoted import load_default_config

# Three columns of sections; a TrainConfig field missing here lands in "Other".
LAYOUT = [
    {"Data": ["data_dir", "holdout_source", "positive_class", "use_official_splits", "max_images_per_split",
              "seed", "cv_folds", "cv_fold"],
     "Evaluation": ["threshold_method", "flip_tta"],
     "Devices": ["strategy"]},
    {"Model": ["backbone", "weights", "input_size", "lung_crop", "lung_mask", "evidence_penalty", "dropout",
               "train_from"],
     "Augmentation": ["rotation", "zoom", "contrast", "flip", "intensity_jitter"]},
    {"Optimisation": ["batch_size", "head_epochs", "head_lr", "finetune_epochs", "finetune_lr",
                      "early_stopping_patience", "lr_patience"]},
]


def form_defaults() -> TrainConfig:
    """The project's recipe, or a search's promoted best; a broken promotion is named and ignored."""
    try:
        return load_default_config()
    except ValueError as error:
        st.error(f"Promoted defaults ignored: {error}")
        return TrainConfig()


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


def settings_form(defaults: TrainConfig) -> TrainConfig:
    """Every setting in its section (a field renamed in core is simply skipped); the config they make."""
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
                    if name in fields:
                        values[name] = setting_widget(fields[name], getattr(defaults, name))
    return TrainConfig(**values)


def forget_train_form() -> None:
    """Drop the Train form's values (keys 'cfg_<name>'), so that it shows the (new) defaults."""
    for key in [k for k in st.session_state if str(k).startswith("cfg_")]:
        del st.session_state[key]


def train_form_config(defaults):
    """The TrainConfig the Train form holds in this session (its widgets keep
    their values under 'cfg_<name>'), over `defaults` for fields never set;
    as the form does, an empty text is None where the field allows None."""
    values = {}
    for field in dataclasses.fields(defaults):
        value = st.session_state.get(f"cfg_{field.name}", getattr(defaults, field.name))
        if isinstance(value, str):
            value = value.strip() or (None if "None" in str(field.type) else "")
        values[field.name] = value
    return type(defaults)(**values)
