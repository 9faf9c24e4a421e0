"""Calibrated probabilities: what a model's "70%" means on slices like the test split's.

A fine-tuned ResNet's softmax is over-confident: COVID-CT slices come out at
0.000 or 1.000, and its decision threshold chosen on validation can sit at
0.15, so "19% -> COVID" reads as a contradiction. Calibration maps the stored
probability p through sigmoid(a * logit(p) + b), fitted on the validation
split's predictions only (the split that chose the threshold; test stays
untouched for reporting):

- "temperature": b = 0, one parameter (a = 1 / T);
- "platt": a and b (logistic regression on the logit).

Both maps are strictly increasing, so `p >= threshold` and
`calibrated(p) >= calibrated(threshold)` give the same decisions: the
threshold is simply shown on the calibrated scale. The method is chosen by
5-fold cross-validated log loss within validation; isotonic regression is
scored too and reported, but not used: its steps map whole ranges of
probabilities to one value, which would change decisions near the threshold.

The fit is stored with the run as calibration.json (written atomically). A
run from before this module gets it fitted from its predictions.csv the first
time it is read (a few milliseconds), and refitted whenever predictions.csv is
newer than it.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold

from core.evaluation import classification
from core.runs import checks, storage
from core.base import files
from core.runs.schemas import CALIBRATION as FILE, CALIBRATION_METHODS as METHODS
EPS = 1e-12  # float32 softmax outputs reach exactly 0 and 1; their logit must stay finite
BINS = 10    # reliability diagram and ECE: ten equal-width bins of predicted probability
BORDERLINE_LEVEL = 0.90  # central share of the bootstrapped thresholds that makes the borderline band
N_THRESHOLD_BOOT = 200
MIN_FOR_CV = 20  # fewer validation images: fit temperature (one parameter) without comparing methods


def logit(prob) -> np.ndarray:
    prob = np.clip(np.asarray(prob, dtype=float), EPS, 1 - EPS)
    return np.log(prob) - np.log1p(-prob)


def sigmoid(z) -> np.ndarray:
    return 1 / (1 + np.exp(-np.asarray(z, dtype=float)))


@dataclass
class Calibration:
    """sigmoid(a * logit(p) + b), and the threshold and borderline band on that scale."""
    method: str = "none"
    a: float = 1.0
    b: float = 0.0
    raw_threshold: float = 0.5
    borderline_raw: list = field(default_factory=lambda: [0.5, 0.5])
    n_val: int = 0
    cv_log_loss: dict = field(default_factory=dict)
    note: str = ""
    test_ece: dict = field(default_factory=dict)  # {"before", "after", "n"}: reported, never fitted on

    def apply(self, prob) -> np.ndarray:
        if self.method == "none":
            return np.asarray(prob, dtype=float)
        return sigmoid(self.a * logit(prob) + self.b)

    def __call__(self, prob) -> np.ndarray:
        return self.apply(prob)

    @property
    def threshold(self) -> float:
        return float(self.apply(self.raw_threshold))

    @property
    def borderline(self) -> tuple[float, float]:
        """(low, high) on the calibrated scale: a probability inside is too close to call."""
        low, high = self.apply(self.borderline_raw)
        return float(low), float(high)

    def to_dict(self) -> dict:
        return {**asdict(self), "threshold": self.threshold, "borderline": list(self.borderline)}

    @classmethod
    def from_dict(cls, values: dict) -> "Calibration":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in values.items() if k in known})


def _fit_map(method: str, y, prob) -> tuple[float, float]:
    """(a, b) of sigmoid(a * logit(p) + b) fitted by maximum likelihood."""
    if method == "none":
        return 1.0, 0.0
    # C large: plain maximum likelihood, as Platt's and temperature scaling's papers fit them.
    model = LogisticRegression(C=1e6, fit_intercept=method == "platt", max_iter=1000)
    model.fit(logit(prob)[:, None], y)
    return float(model.coef_[0, 0]), float(np.ravel(model.intercept_)[0])


def _cv_log_loss(y, prob, folds: int, seed: int) -> dict:
    """Mean held-out log loss of each method (and isotonic, for the record) within validation."""
    scores = {m: [] for m in (*METHODS, "isotonic")}
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_rows, held_rows in splitter.split(prob, y):
        for method in METHODS:
            a, b = _fit_map(method, y[fit_rows], prob[fit_rows])
            held = np.clip(sigmoid(a * logit(prob[held_rows]) + b), EPS, 1 - EPS)
            scores[method].append(log_loss(y[held_rows], held, labels=[0, 1]))
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(prob[fit_rows], y[fit_rows])
        held = np.clip(iso.predict(prob[held_rows]), EPS, 1 - EPS)
        scores["isotonic"].append(log_loss(y[held_rows], held, labels=[0, 1]))
    return {m: float(np.mean(v)) for m, v in scores.items()}


def threshold_band(y, prob, threshold: float, method: str, seed: int) -> list[float]:
    """Where the validation-chosen threshold could as well have landed: the
    central BORDERLINE_LEVEL of the thresholds chosen on bootstrap resamples
    of validation (raw scale), widened to include the threshold itself."""
    rng = np.random.default_rng(seed)
    chosen = []
    for _ in range(N_THRESHOLD_BOOT):
        rows = rng.integers(0, len(y), len(y))
        if len(np.unique(y[rows])) == 2:
            chosen.append(classification.choose_threshold(y[rows], prob[rows], method=method))
    if not chosen:
        return [threshold, threshold]
    tail = (1 - BORDERLINE_LEVEL) / 2 * 100
    low, high = np.percentile(chosen, [tail, 100 - tail])
    return [float(min(low, threshold)), float(max(high, threshold))]


def fit(predictions: pd.DataFrame, threshold: float, threshold_method: str = classification.THRESHOLD_RULE,
        seed: int = 0) -> Calibration:
    """Calibration fitted on the val rows of `predictions` (path, y_true, prob, split);
    the test rows only give the ECE before and after, for the record."""
    val = predictions[predictions["split"] == "val"]
    y, prob = val["y_true"].to_numpy().astype(int), val["prob"].to_numpy(dtype=float)
    smallest_class = int(np.bincount(y, minlength=2).min()) if len(y) else 0
    if smallest_class == 0:
        calibration = Calibration(raw_threshold=threshold, borderline_raw=[threshold, threshold], n_val=len(y),
                                  note="validation has a single class: probabilities left uncalibrated")
    else:
        if len(y) >= MIN_FOR_CV and smallest_class >= 2:
            scores = _cv_log_loss(y, prob, folds=min(5, smallest_class), seed=seed)
            method = min(METHODS, key=scores.get)
            note = f"{method}: lowest cross-validated log loss within validation"
        else:
            scores, method = {}, "temperature"
            note = f"only {len(y)} validation images: temperature scaling, methods not compared"
        a, b = _fit_map(method, y, prob)
        if a <= 0:  # the model ranks validation backwards: no increasing map exists
            method, a, b, note = "none", 1.0, 0.0, "the model ranks validation backwards: left uncalibrated"
        calibration = Calibration(method=method, a=a, b=b, raw_threshold=threshold,
                                  borderline_raw=threshold_band(y, prob, threshold, threshold_method, seed),
                                  n_val=len(y), cv_log_loss=scores, note=note)
    test = predictions[predictions["split"] == "test"]
    if len(test):
        calibration.test_ece = {
            "before": expected_calibration_error(test["y_true"], test["prob"]),
            "after": expected_calibration_error(test["y_true"], calibration.apply(test["prob"])),
            "n": len(test)}
    return calibration


def calibrated_predictions(frame: pd.DataFrame, fitted: Calibration) -> pd.DataFrame:
    """Stored predictions (a prob column of the model's own outputs) as every
    page shows them: prob on `fitted`'s calibrated scale, the model's own in
    raw_prob. The run's predictions.csv and an external set's are stored raw;
    this is the one place they are put on the scale of the threshold shown."""
    return frame.assign(raw_prob=frame["prob"], prob=fitted.apply(frame["prob"]))


def expected_calibration_error(y_true, prob, bins: int = BINS) -> float:
    """Share-weighted mean |observed frequency - mean predicted probability| over equal-width bins."""
    table = reliability_table(y_true, prob, bins)
    return float((table["n"] * (table["observed"] - table["predicted"]).abs()).sum() / table["n"].sum())


def reliability_table(y_true, prob, bins: int = BINS) -> pd.DataFrame:
    """One row per non-empty bin of predicted probability: bin edges, n, mean
    predicted probability and observed share of positives (the reliability diagram)."""
    y_true = np.asarray(y_true, dtype=float)
    prob = np.asarray(prob, dtype=float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(prob, edges[1:-1]), 0, bins - 1)
    frame = pd.DataFrame({"bin": which, "y": y_true, "p": prob})
    grouped = frame.groupby("bin").agg(n=("y", "size"), predicted=("p", "mean"), observed=("y", "mean"))
    grouped["low"], grouped["high"] = edges[grouped.index], edges[grouped.index + 1]
    return grouped.reset_index(drop=True)[["low", "high", "n", "predicted", "observed"]]


def for_run(run_dir) -> Calibration:
    """The run's calibration: its calibration.json, or fitted now from
    predictions.csv and metrics.json (and stored) when it has none or an
    older one. A run without predictions gets the identity. A calibration.json
    that fails its schema (core.runs.schemas: a map that falls, a threshold
    outside 0..1) is DamagedRun naming the field, never applied."""
    run_dir = Path(run_dir)
    path, source = run_dir / FILE, run_dir / "predictions.csv"
    stored = checks.read_valid(path)
    if not source.exists():
        return Calibration.from_dict(stored) if stored else Calibration(note="no predictions.csv: uncalibrated")
    if stored and os.path.getmtime(path) >= os.path.getmtime(source):
        return Calibration.from_dict(stored)
    metrics = checks.read_valid(run_dir / "metrics.json") or {}
    config = checks.read_valid(run_dir / "config.json") or {}
    calibration = fit(storage.read_predictions(run_dir), storage.decision_threshold(metrics),
                      (metrics.get("threshold") or {}).get("method", classification.THRESHOLD_RULE),
                      seed=int(config.get("seed", 0)))
    try:
        files.write_json(path, calibration.to_dict())
    except OSError:
        pass  # a read-only run folder: the fit is cheap, redone on the next read
    return calibration


def percent(prob: float) -> str:
    """A calibrated probability as people read it: whole percents, and never
    "0%" or "100%", which no model fitted on ~100 validation slices can claim."""
    if prob < 0.01:
        return "<1%"
    if prob > 0.99:
        return ">99%"
    return f"{prob:.0%}"
