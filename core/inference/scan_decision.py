"""Scan-level decisions: which slices of a scan to score, how their
probabilities become one probability for the scan, and the threshold that
decides a scan.

1. Slices worth scoring show lung: the lung fields (core.data.lung) cover at
   least MIN_LUNG_AREA of the slice. A chest CT also holds neck and abdomen
   slices, which the model never saw in training. Of a thin-slice scan, one
   slice per MIN_SPACING_MM is scored.
2. Each such slice goes through Predictor.predict_images in batches, so the
   run's calibration and out-of-distribution guard apply per slice; a slice
   the guard refuses does not count.
3. The scan's probability aggregates the calibrated slice probabilities
   with one of AGGREGATIONS, chosen, with its threshold, on the run's
   VALIDATION patients (RUN/scan.json, written atomically, redone when the
   run's predictions or calibration change). A run whose patients cannot be
   found falls back on the mean and the slice threshold, and says so.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from core.inference import calibration
from core.evaluation import classification
from core.evaluation.patient_level import AGGREGATIONS, aggregate, per_patient
from core.data import lung
from core.runs import checks, storage
from core.base import files
from core.data.scans import Scan
from core.runs import dataset
from core.runs.schemas import SCAN as SCAN_FILE

# A slice with less lung than this is an apex or base cut unlike anything the model was trained on, or no
# lung at all (docs/scan-level.md: where COVID-CT's slices lie).
MIN_LUNG_AREA = 0.03
LUNG_MASK_SIDE = 256  # px: masks computed on slices scaled to this: faster, and the same fractions
# Slices closer than this are taken to show the same opacities (assumed to span more than 5 mm along the
# body): scoring every slice of a thin-slice scan would cost time for no new evidence (docs/scan-level.md).
MIN_SPACING_MM = 5.0
FALLBACK = "mean"
BATCH_SIZE = 32  # slices decoded into one model call


def lung_fraction(image: np.ndarray) -> float:
    """Share of the slice covered by lung fields (0 when core.data.lung finds none)."""
    scale = LUNG_MASK_SIDE / max(image.shape[:2])
    if scale < 1:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return float(lung.lung_mask(image).mean())


def slices_to_score(fractions, positions=None) -> tuple[list[int], list[str]]:
    """(indices of the slices to score, notes): those that show lung, at least
    MIN_SPACING_MM apart where positions (mm, ascending) are known. When no
    slice shows lung (slice images cut tightly from figures, say), all are scored."""
    chosen = [i for i, fraction in enumerate(fractions) if fraction >= MIN_LUNG_AREA]
    if not chosen:
        return list(range(len(fractions))), [f"no slice shows lung fields over {MIN_LUNG_AREA:.0%} of it to "
                                             "the classical lung mask: every slice was scored"]
    if positions is None:
        return chosen, []
    spaced = [chosen[0]]
    for i in chosen[1:]:
        if positions[i] - positions[spaced[-1]] >= MIN_SPACING_MM - 1e-3:
            spaced.append(i)
    skipped = len(chosen) - len(spaced)
    return spaced, [f"{skipped} lung slices within {MIN_SPACING_MM:g} mm of a scored one were not scored"] \
        if skipped else []


@dataclass
class ScanResult:
    scan: Scan
    lung_fraction: list[float]         # per slice
    scored: list[int]                  # slices scored, in scan order
    probability: dict[int, float]      # calibrated, per scored slice
    refusals: dict[int, list[str]]     # the guard's reasons, per scored slice ([] passes)
    settings: dict                     # core.inference.scan_decision.settings_for_run: aggregation, threshold, caveat
    positive_class: str
    negative_class: str
    notes: list[str] = field(default_factory=list)

    @property
    def counted(self) -> list[int]:
        """Scored slices the guard let through: those the scan's probability aggregates."""
        return [i for i in self.scored if not self.refusals[i]]

    @property
    def scan_probability(self) -> float | None:
        counted = self.counted
        return aggregate([self.probability[i] for i in counted], self.settings["aggregation"]) if counted else None

    @property
    def decision(self) -> str:
        p = self.scan_probability
        if p is None:
            return "refused"
        return self.positive_class if p >= self.settings["threshold"] else self.negative_class

    @property
    def borderline(self) -> bool:
        """Too close to call: the scan probability lies in the band where the scan threshold could as
        well have landed (chosen as a slice's is, core.inference.calibration.threshold_band)."""
        p, band = self.scan_probability, self.settings.get("borderline")
        return p is not None and band is not None and band[0] <= p <= band[1]

    @property
    def most_suspicious(self) -> int | None:
        """The slice with the highest probability (among those counted, else those scored)."""
        pool = self.counted or self.scored
        return max(pool, key=lambda i: self.probability[i]) if pool else None


def score_scan(predictor, scan: Scan, settings: dict, progress=None) -> ScanResult:
    """Score the slices of `scan` that show lung with `predictor` (core.inference.predict.Predictor),
    BATCH_SIZE at a time; progress(done, total) after each batch."""
    fractions = [lung_fraction(scan.rgb(i)) for i in range(len(scan.slices))]
    scored, scoring_notes = slices_to_score(fractions, scan.positions)
    probability, refusals = {}, {}
    for start in range(0, len(scored), BATCH_SIZE):
        batch = scored[start:start + BATCH_SIZE]
        results = predictor.predict_images([scan.rgb(i) for i in batch], [scan.slice_names[i] for i in batch])
        for i, result in zip(batch, results):
            probability[i], refusals[i] = result.probability, result.ood_problems
        if progress is not None:
            progress(start + len(batch), len(scored))
    notes = list(scan.notes) + scoring_notes
    refused = sum(1 for i in scored if refusals[i])
    if refused:
        notes.append(f"{refused} of {len(scored)} scored slices not like the training scans: left out of the "
                     "scan's probability")
    return ScanResult(scan, fractions, scored, probability, refusals, settings, predictor.positive_class,
                      predictor.negative_class, notes)


# ---------------------------------------------------------------------------
# Choosing the aggregation and the scan threshold on validation patients
# ---------------------------------------------------------------------------

def patient_frame(run_dir) -> pd.DataFrame:
    """The run's predictions.csv with the calibrated probability (prob) and
    each slice's patient (patient_id, from the run's dataset index)."""
    run_dir = Path(run_dir)
    frame = storage.read_predictions(run_dir)
    index = dataset.run_index_of(run_dir)
    patients = dict(zip(index["relpath"], index["patient_id"]))
    missing = frame.loc[~frame["path"].isin(patients), "path"]
    if len(missing):
        raise ValueError(f"{missing.iloc[0]} (and {len(missing) - 1} more) of the run's predictions are not in "
                         "its dataset any more")
    return frame.assign(prob=calibration.for_run(run_dir).apply(frame["prob"]),
                        patient_id=frame["path"].map(patients))


def compare_aggregations(frame: pd.DataFrame, n_boot: int | None = None, seed: int = 0,
                         splits=("val", "test")) -> pd.DataFrame:
    """Patient-level ROC-AUC with its bootstrap 95% CI (patients resampled) of
    each aggregation, per split present: columns split, method, patients,
    multi_slice, roc_auc, ci_low, ci_high."""
    rows = []
    for split in splits:
        part = frame[frame["split"] == split]
        if part.empty:
            continue
        for method in AGGREGATIONS:
            patients = per_patient(part, method)
            auc = classification.binary_metrics(patients["y_true"], patients["prob"])["roc_auc"]
            low, high = classification.bootstrap_ci(patients["y_true"], patients["prob"], n_boot=n_boot,
                                              seed=seed)["roc_auc"]
            rows.append({"split": split, "method": method, "patients": len(patients),
                         "multi_slice": int((patients["slices"] > 1).sum()), "roc_auc": auc,
                         "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def choose_settings(frame: pd.DataFrame, threshold_method: str = classification.THRESHOLD_RULE,
                    n_boot: int | None = None,
                    seed: int = 0) -> dict:
    """The aggregation with the best validation-patient ROC-AUC (ties go to
    the mean, the simplest) and its threshold chosen on the validation
    patients; test patients are scored at it, for reporting only."""
    comparison = compare_aggregations(frame, n_boot, seed)
    val = comparison[comparison["split"] == "val"].dropna(subset=["roc_auc"])
    if val.empty:
        raise ValueError("the validation split has no patients of both classes")
    best = val["roc_auc"].max()
    method = next(m for m in AGGREGATIONS if m in set(val.loc[val["roc_auc"] >= best - 1e-12, "method"]))
    val_patients = per_patient(frame[frame["split"] == "val"], method)
    threshold = classification.choose_threshold(val_patients["y_true"], val_patients["prob"], threshold_method)
    test = frame[frame["split"] == "test"]
    test_metrics = None
    if len(test):
        test_patients = per_patient(test, method)
        test_metrics = classification.metrics_at(test_patients["y_true"], test_patients["prob"], threshold,
                                           n_boot=n_boot, seed=seed)
    # The same borderline rule as a slice's: where the threshold could as well have landed.
    borderline = calibration.threshold_band(val_patients["y_true"].to_numpy(), val_patients["prob"].to_numpy(),
                                            threshold, threshold_method, seed)
    return {"aggregation": method, "threshold": threshold, "borderline": borderline,
            "chosen_on": "validation patients",
            "threshold_method": threshold_method, "val_patients": int(len(val_patients)),
            "val_multi_slice_patients": int((val_patients["slices"] > 1).sum()), "caveat": None,
            "comparison": comparison.astype(object).where(comparison.notna(), None).to_dict("records"),
            "test_patients": test_metrics}


def fallback_settings(run_dir, reason: str) -> dict:
    """Mean of the slices at the slice threshold, with the caveat stated."""
    slices = calibration.for_run(run_dir)
    return {"aggregation": FALLBACK, "threshold": slices.threshold, "borderline": list(slices.borderline),
            "chosen_on": "none",
            "caveat": f"no scan threshold for this run ({reason}): the mean of the slices is decided at the "
                      "slice threshold, which was chosen for single slices, not scans",
            "comparison": [], "test_patients": None}


def settings_for_run(run_dir, n_boot: int | None = None) -> dict:
    """The run's scan settings: RUN/scan.json, or chosen now (and stored) when
    it has none or one older than its predictions or calibration; DamagedRun
    naming the field when scan.json fails its schema (core.runs.schemas)."""
    run_dir = Path(run_dir)
    path = run_dir / SCAN_FILE
    sources = [run_dir / name for name in ("predictions.csv", calibration.FILE) if (run_dir / name).exists()]
    stored = checks.read_valid(path)
    if stored and all(os.path.getmtime(path) >= os.path.getmtime(source) for source in sources):
        return stored
    if not (run_dir / "predictions.csv").exists():
        return fallback_settings(run_dir, "it has no predictions.csv")
    metrics = checks.read_valid(run_dir / "metrics.json") or {}
    seed = int((checks.read_valid(run_dir / "config.json") or {}).get("seed", 0))
    try:
        settings = choose_settings(patient_frame(run_dir), (metrics.get("threshold") or {}).get("method", "youden"),
                                   n_boot=n_boot, seed=seed)
    except (ValueError, OSError, KeyError) as error:  # the dataset moved, no patients of both classes...
        return fallback_settings(run_dir, str(error))  # not stored: tried again once the cause is gone
    settings["made"] = storage.now()
    try:
        files.write_json(path, settings)
    except OSError:
        pass  # a read-only run folder: chosen again on the next read
    return settings
