"""What each file of a run (and the deployed record) may hold: one schema per
file, stated here once, checked on every read (core.runs.checks).

A schema gives each field its type, its range or choices, whether it may be
null and whether it must be there; lists of a fixed length are ordered pairs
(a confidence interval, a band: low <= high). Fields a schema does not name
are left alone (a newer version may have written them); how deep a file may
nest is bounded where JSON is parsed (core.base.files.MAX_JSON_DEPTH). A
problem reads "<file>: <field> <value> <what is wrong>", and `validate` also
returns the file with every field that failed left out, so that what lists
a damaged run never meets a list where a number belongs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.base import files
from core.base.files import check_name
from core.base.ranges import FINITE, NOT_NEGATIVE, Range
from core.evaluation.classification import METRICS, THRESHOLD_RULES
from core.evaluation.patient_level import AGGREGATIONS

# The files, by name: each is read (and written) by the module its comment names.
CONFIG, STATUS, METRICS_FILE, PREDICTIONS = "config.json", "status.json", "metrics.json", "predictions.csv"
CALIBRATION = "calibration.json"  # core.inference.calibration
SCAN = "scan.json"                # core.inference.scan_decision
OOD_SUMMARY, OOD_FEATURES = "ood.json", "ood.npz"  # core.inference.ood
DEPLOYED = "deployed.json"        # core.inference.deploy, in the artifacts folder
MODEL = "model.keras"
PAIR = "pair.json"                # core.inference.pair: a pair run's two member runs, in place of a model

STATES = ("running", "completed", "failed", "cancelled", "interrupted", "pruned")
CALIBRATION_METHODS = ("none", "temperature", "platt")
UNIT = Range(0, 1)
COUNT = NOT_NEGATIVE
_DROP = object()


@dataclass(frozen=True)
class Field:
    kind: type | tuple
    range: Range | None = None
    choices: tuple | None = None
    null: bool = False
    required: bool = False
    fields: dict | None = None   # an object's named fields
    each: "Field | None" = None  # a list's items, or an object's values when it names none
    pair: bool = False           # a list [low, high], low <= high


def number(allowed=FINITE, **options) -> Field:
    return Field(float, allowed, **options)


def integer(allowed=COUNT, **options) -> Field:
    return Field(int, allowed, **options)


def text(choices=None, **options) -> Field:
    return Field(str, choices=tuple(choices) if choices else None, **options)


def record(fields=None, each=None, **options) -> Field:
    return Field(dict, fields=fields, each=each, **options)


def pair(allowed=UNIT, null=False, **options) -> Field:
    return Field(list, each=number(allowed, null=null), pair=True, **options)


def _short(value) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


KIND_NAMES = {float: "a number", int: "a whole number", str: "a string", bool: "true or false", dict: "an object",
              list: "a list", (str, type(None)): "a string"}


def _kind_problem(value, spec: Field) -> str | None:
    if value is None:
        return None if spec.null else "must not be null"
    if spec.kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif spec.kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, spec.kind)
    if not ok:
        return f"is not {KIND_NAMES[spec.kind]}"
    if isinstance(value, str) and files.as_text(value) != value:
        return "is not UTF-8 text"
    if spec.range is not None and value not in spec.range:
        return f"must be {spec.range}"
    if spec.choices is not None and value not in spec.choices:
        return f"is not one of {', '.join(map(str, spec.choices))}"
    return None


def _check(value, spec: Field, where: str, problems: list):
    """The value with what fails left out (_DROP when the value itself fails); problems appended."""
    problem = _kind_problem(value, spec)
    if problem:
        problems.append(f"{where} {_short(value)} {problem}" if where else f"{_short(value)} {problem}")
        return _DROP
    if isinstance(value, dict) and (spec.fields or spec.each):
        clean = {}
        for name in [*value, *(n for n in spec.fields or {} if n not in value)]:  # the file's order
            child = (spec.fields or {}).get(name, spec.each if not spec.fields else None)
            at = f"{where}.{name}" if where else name
            if name not in value:
                if child is not None and child.required:
                    problems.append(f"{at} is missing")
                continue
            kept = value[name] if child is None else _check(value[name], child, at, problems)
            if kept is not _DROP:
                clean[name] = kept
        return clean
    if isinstance(value, list) and spec.each:
        if spec.pair and len(value) != 2:
            problems.append(f"{where} {_short(value)} is not a pair [low, high]")
            return _DROP
        clean = [_check(item, spec.each, f"{where}[{i}]", problems) for i, item in enumerate(value)]
        if _DROP in clean:
            return _DROP
        if spec.pair and None not in clean and clean[0] > clean[1]:
            problems.append(f"{where} {_short(value)} must be [low, high] with low <= high")
            return _DROP
        return clean
    return value


def validate(value, spec: Field, file: str) -> tuple[object, list[str]]:
    """(the value with every field that fails left out, ["<file>: <field> ..."])."""
    problems: list[str] = []
    clean = _check(value, spec, "", problems)
    return (None if clean is _DROP else clean), [f"{file}: {problem}" for problem in problems]


# A metrics object of classification.binary_metrics / metrics_at.
MEASURES = record({**{name: number(UNIT, null=True) for name in METRICS},
                   **{name: integer() for name in ("tn", "fp", "fn", "tp", "n")},
                   "threshold": number(UNIT), "ci": record(each=pair(null=True))})
SPLIT = record({"at_0.5": record(MEASURES.fields, required=True),
                "at_threshold": record(MEASURES.fields, required=True)})

SCHEMAS = {
    STATUS: record({
        "state": text(STATES, required=True), "pid": integer(Range(1), null=True), "pid_start": integer(null=True),
        "reason": text(null=True), "phase": text(null=True), "study": text(null=True),
        "trial": integer(null=True), "epoch": integer(null=True), "epochs": integer(null=True),
        "train_seconds": number(COUNT, null=True), "replicas": integer(Range(1), null=True),
        "done": integer(null=True), "total": integer(null=True),
        "phases_done": Field(list, each=text()),
        **{name: text(null=True) for name in ("started_at", "updated_at", "started", "finished", "data_dir")}}),
    METRICS_FILE: record({
        "threshold": record({"value": number(UNIT, required=True), "method": text(THRESHOLD_RULES),
                             "chosen_on": text()}),
        "val": SPLIT, "test": SPLIT, "labels": record({"negative": text(), "positive": text()})}),
    CALIBRATION: record({
        "method": text(CALIBRATION_METHODS, required=True),
        # a > 0: the map sigmoid(a * logit(p) + b) must rise, or it turns decisions around.
        "a": number(Range(0, math.inf, open_low=True, open_high=True), required=True),
        "b": number(required=True), "raw_threshold": number(UNIT, required=True),
        "borderline_raw": pair(required=True), "n_val": integer(), "note": text(),
        "cv_log_loss": record(each=number(COUNT)), "threshold": number(UNIT), "borderline": pair(),
        "test_ece": record({"before": number(UNIT), "after": number(UNIT), "n": integer()})}),
    SCAN: record({
        "aggregation": text(AGGREGATIONS, required=True), "threshold": number(UNIT, required=True),
        "chosen_on": text(), "threshold_method": text(THRESHOLD_RULES), "caveat": text(null=True),
        "val_patients": integer(), "val_multi_slice_patients": integer(), "made": text(),
        "comparison": Field(list, each=record({
            "split": text(), "method": text(AGGREGATIONS), "patients": integer(), "multi_slice": integer(),
            **{name: number(UNIT, null=True) for name in ("roc_auc", "ci_low", "ci_high")}})),
        "test_patients": record(MEASURES.fields, null=True)}),
    OOD_SUMMARY: record({
        "k": integer(Range(1, 1000), required=True),
        # infinite when the run had no validation slices: nothing is refused for its features
        "threshold": number(Range(0, math.inf), required=True), "percentile": number(Range(0, 100)),
        "n_train": integer(), "n_val": integer(), "val_distance_median": number(COUNT, null=True),
        "layer": text()}),
    DEPLOYED: record({"run": text(required=True), "deployed_at": text(),
                      "confirmed_despite": Field(list, each=text())}),
}


def deployed_problems(record_: dict) -> list[str]:
    _, found = validate(record_, SCHEMAS[DEPLOYED], DEPLOYED)
    if not found:
        try:
            check_name(record_["run"], "run id")
        except ValueError as error:
            found.append(f"{DEPLOYED}: run: {error}")
    return found


def ood_features_problems(arrays) -> list[str]:
    """ood.npz: the training slices' features, a finite float array of one row per slice."""
    if "train" not in arrays:
        return [f"{OOD_FEATURES}: no 'train' array"]
    train = arrays["train"]
    if train.ndim != 2 or len(train) < 1 or not np.issubdtype(train.dtype, np.floating):
        return [f"{OOD_FEATURES}: train is {train.dtype} of shape {train.shape}, not rows of features"]
    if not np.isfinite(train).all():
        return [f"{OOD_FEATURES}: train holds non-finite values"]
    return []
