"""Per-patient figures: a patient's slices aggregated into one probability.
Slices of one patient are near copies, so a patient is the unit that
confidence intervals resample and that a scan decision is about."""
from __future__ import annotations

import numpy as np
import pandas as pd

# Below this many patients of either class a bootstrap resamples the same few again and again: its
# interval is not drawn, and figures say TOO_FEW (docs/site-adaptation.md).
MIN_PATIENTS_FOR_CI = 5  # per class
TOO_FEW = "too few patients to estimate"


TOP_K = 3  # COVID-19 lesions show on some slices: the mean of the 3 most suspicious is less swayed by one odd slice


AGGREGATIONS = {"mean": "mean of the slices", "top3": f"mean of the {TOP_K} most suspicious slices",
                "noisy_or": "noisy-OR (1 − ∏(1 − p))"}


def aggregate(probabilities, method: str) -> float:
    """One probability from a scan's slice probabilities."""
    p = np.sort(np.asarray(probabilities, dtype=float))[::-1]
    if p.size == 0:
        raise ValueError("no slice probability to aggregate")
    if method == "mean":
        return float(p.mean())
    if method == "top3":
        return float(p[:TOP_K].mean())
    if method == "noisy_or":  # "at least one slice is positive", slices taken as independent
        return float(1 - np.prod(1 - np.clip(p, 0, 1)))
    raise ValueError(f"unknown aggregation {method!r}: use one of {', '.join(AGGREGATIONS)}")


def per_patient(frame: pd.DataFrame, method: str = "mean") -> pd.DataFrame:
    """One row per patient: patient_id, y_true, prob (the patient's slice
    probabilities aggregated by `method`; the mean treats every slice as one
    vote of equal weight, so one odd slice moves the patient little) and
    slices. A patient whose slices carry both labels is a labelling error."""
    grouped = frame.groupby("patient_id", sort=True)
    mixed = grouped["y_true"].nunique()
    if (mixed > 1).any():
        raise ValueError(f"patient {mixed[mixed > 1].index[0]!r} has slices of both classes")
    return pd.DataFrame({"y_true": grouped["y_true"].first(),
                         "prob": grouped["prob"].agg(lambda p: aggregate(p, method)),
                         "slices": grouped.size()}).reset_index()


def enough_patients(patients: pd.DataFrame) -> bool:
    """Whether a per-patient frame (y_true per patient) has MIN_PATIENTS_FOR_CI patients of each class."""
    return int(patients["y_true"].value_counts().reindex([0, 1], fill_value=0).min()) >= MIN_PATIENTS_FOR_CI
