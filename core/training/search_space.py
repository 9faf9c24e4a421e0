"""The search space of a hyperparameter search (core.training.tune): per parameter a
list of choices, or a {"low", "high", "log"} range, checked value by value
against TrainConfig."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna

from core.runs.train_config import BACKBONES, CT_BACKBONES, IMAGENET_BACKBONES, TrainConfig

# The default search space: each setting's own (its field's "search" in
# core.runs.train_config), and augment_strength. A list: the choices; a dict: a range,
# sampled on a log scale when "log".
SPACE = {
    **{f.name: f.metadata["search"] for f in dataclasses.fields(TrainConfig) if "search" in f.metadata},
    "augment_strength": {"low": 0.0, "high": 1.0, "log": False},
}
INTEGERS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.type in ("int", int))
# augment_strength scales three settings together: 0 turns them off, 0.5 is the
# default recipe (10 degrees, 0.1, 0.1), 1 doubles it. Flips stay as set.
AUGMENT_AT_FULL_STRENGTH = {"rotation": 20.0, "zoom": 0.2, "contrast": 0.2}


def fields_of(parameter: str) -> tuple[str, ...]:
    """The TrainConfig settings a search parameter sets."""
    return tuple(AUGMENT_AT_FULL_STRENGTH) if parameter == "augment_strength" else (parameter,)


def searched_fields(space: dict) -> set[str]:
    return {name for parameter in space for name in fields_of(parameter)}


def settings(params: dict) -> dict:
    """TrainConfig values for sampled parameters."""
    values = dict(params)
    strength = values.pop("augment_strength", None)
    if strength is not None:
        values.update({name: round(full * strength, 4) for name, full in AUGMENT_AT_FULL_STRENGTH.items()})
    return values


def loadable_backbones(weights: str | None) -> list[str]:
    """The backbones these weights load into: all of them for "imagenet"
    (Keras downloads each one's) or none (random); for a file, those named in
    its file name (resnet50_imagenet.weights.h5 fits ResNet-50 only), or all
    when it names none. The CT backbones load their own weights (core.models.ct_backbone)."""
    if weights in (None, "imagenet"):
        return list(BACKBONES)
    return ([b for b in IMAGENET_BACKBONES if b in Path(weights).name] or list(IMAGENET_BACKBONES)) + list(CT_BACKBONES)


def make_space(changes: dict | None, base: TrainConfig, fixed=()) -> dict:
    """The default space, with the backbones `base.weights` can load, updated
    by `changes` (None for a parameter leaves it out), less the parameters
    whose settings are `fixed`; checked value by value against TrainConfig."""
    loadable = loadable_backbones(base.weights)
    space = {**SPACE, "backbone": [b for b in SPACE["backbone"] if b in loadable], **(changes or {})}
    space = {name: spec for name, spec in space.items()
             if spec is not None and not set(fields_of(name)) & set(fixed)}
    if not space:
        raise ValueError("the search space is empty: every parameter is fixed")
    problems, checked = [], {}
    for name, spec in space.items():
        if name not in SPACE:
            problems.append(f"unknown parameter {name!r} (one of {', '.join(SPACE)})")
            continue
        checked[name], values, found = _canonical(name, spec)
        problems += found
        for value in values:  # TrainConfig's own words, which name the setting they are about
            problems += [p if p.startswith(name) else f"{name} {value!r}: {p}"
                         for p in _value_problems(base, name, value)]
    unloadable = [b for b in checked.get("backbone", []) if b in BACKBONES and b not in loadable]
    if unloadable:
        problems.append(f"backbone {', '.join(unloadable)} cannot load the weights {base.weights} "
                        "(ResNet-101/152 need --weights imagenet)")
    if problems:
        raise ValueError("invalid search space: " + "; ".join(problems))
    return checked


def _canonical(name: str, spec) -> tuple[object, list, list[str]]:
    """(spec as a list of choices or a full range dict, the values to check, problems)."""
    if not isinstance(spec, dict):
        choices = list(spec) if isinstance(spec, (list, tuple)) else [spec]
        return choices, choices, [] if choices else [f"{name}: no choices"]
    low, high = spec.get("low"), spec.get("high")
    if set(spec) - {"low", "high", "log"} or not all(_is_number(v) for v in (low, high)):
        return spec, [], [f"{name}: a range is {{\"low\": number, \"high\": number, \"log\": true or false}}"]
    spec = {"low": low, "high": high, "log": bool(spec.get("log", False))}
    found = [f"{name}: low {low} is above high {high}"] if low > high else []
    if spec["log"] and low <= 0:
        found.append(f"{name}: a log range needs low > 0")
    return spec, [low, high], found


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _value_problems(base: TrainConfig, name: str, value) -> list[str]:
    """What TrainConfig says about `value` that it does not say about `base` already."""
    current = getattr(base, fields_of(name)[0])
    if name in INTEGERS:
        right_type, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif _is_number(current):
        right_type, kind = _is_number(value), "a number"
    else:
        right_type, kind = isinstance(value, str), "a string"
    if not right_type:
        return [f"{name} {value!r} must be {kind}"]
    changed = dataclasses.replace(base, **settings({name: value}))
    return [p for p in changed.problems() if p not in base.problems()]


def suggest(trial: optuna.Trial, space: dict) -> dict:
    """One value per parameter, drawn by the study's sampler."""
    params = {}
    for name, spec in space.items():
        if isinstance(spec, list):
            params[name] = trial.suggest_categorical(name, spec)
        elif name in INTEGERS:
            params[name] = trial.suggest_int(name, spec["low"], spec["high"], log=spec["log"])
        else:
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec["log"])
    return params
