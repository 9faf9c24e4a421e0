"""Site profile: the deployed model's calibration and threshold refitted on
one site's labelled scans, stored beside the model under a name.

A model's probabilities were calibrated, and its threshold chosen, on its
own validation scans. At another hospital the same model can rank scans well
enough and still be miscalibrated, its "70%" meaning something else and its
threshold sitting in the wrong place (issue 27, docs/site-adaptation.md). A
profile refits both on the site's labelled slices, with the patients known:

- calibration: the family of core.inference.calibration (none, temperature or Platt
  scaling of the model's raw probability, chosen by calibration.fit's
  cross-validated log loss), fitted on the site's raw probabilities;
- threshold: the run's rule (its threshold_method, Youden's J by default)
  applied to the site's raw probabilities; and a scan threshold for
  predict-scan: the run's aggregation of slices into a patient's
  probability, its threshold chosen by the same rule on the site's patients.

The figures a profile reports (ROC-AUC, sensitivity and specificity at the
site's threshold, ECE as deployed and after) are cross-fitted by patient:
the patients are split into K folds (stratified by class), and each
patient's probability and decision come from a calibration and threshold
fitted on the other folds' patients only. So they estimate how the profile
does on the site's next patients, not on those it was fitted on. Their 95%
CIs resample whole patients; with fewer than patient_level.MIN_PATIENTS_FOR_CI patients of
a class no CI is drawn ("too few patients to estimate"): a percentile
bootstrap over so few clusters is narrower than the truth. The stored
profile is then fitted on all the patients.

A profile changes the calibration and the threshold, both increasing maps
of the model's output, never how the model ranks scans: where it ranks the
site's slices below POOR_AUC, the profile's summary says not to use the
model there.

Minimum to fit: MIN_PATIENTS patients, MIN_PATIENTS_PER_CLASS of each class.
Cross-fitting needs every fold to leave patients of both classes to fit on:
with 3 per class, 3 folds leave 2 per class; a threshold chosen on fewer
patients of a class follows one patient's slices. And below about 10
patients, the cross-fitted figures move by tenths from one patient to the
next: a profile would replace a calibration fitted on the run's validation
patients with one no better known. Below it the fit is refused, saying how
many more patients are needed.

Stored as RUN/sites/NAME/: predictions.csv (each slice's raw and
cross-fitted probability) and profile.json, written into a hidden folder
that is renamed into place, so a profile is there whole or not at all.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.inference import calibration
from core.evaluation import classification, patient_level
from core.runs import storage
from core.base import files
from core.inference import site_labels, site_store
from core.inference.calibration import Calibration

MIN_PATIENTS = 10
MIN_PATIENTS_PER_CLASS = 3
# A model that ranks the site's slices this badly has a ranking problem, which no calibration or threshold
# (both increasing maps of its output) can change: the profile then says so instead of offering a fix.
POOR_AUC = 0.6
FOLDS = 5
SITE_WORDS = {"validation images": "site slices", "within validation": "within the site's slices",
              "ranks validation": "ranks the site's slices", "validation has": "the site's slices have"}
FIGURES = {"roc_auc": "ROC-AUC", "sensitivity": "sensitivity", "specificity": "specificity",
           "ece": "ECE (calibration error)"}



def patient_counts(frame: pd.DataFrame) -> dict:
    """{"total", "negative", "positive"}: patients per class (y 0 / 1)."""
    per_patient = frame.groupby("patient_id")["y"].first()
    return {"total": len(per_patient), "negative": int((per_patient == 0).sum()),
            "positive": int((per_patient == 1).sum())}


def shortfall(counts: dict) -> dict:
    """How many more patients a fit needs: {"total", "negative", "positive"}, all 0 when enough."""
    per_class = {c: max(0, MIN_PATIENTS_PER_CLASS - counts[c]) for c in ("negative", "positive")}
    return {"total": max(MIN_PATIENTS - counts["total"], sum(per_class.values())), **per_class}


def require_patients(frame: pd.DataFrame, negative: str, positive: str, what: str = "") -> dict:
    """The patient counts; ValueError saying how many more are needed below the minimum."""
    counts = patient_counts(frame)
    more = shortfall(counts)
    if more["total"]:
        of_class = [f"{more[c]} {label}" for c, label in (("positive", positive), ("negative", negative)) if more[c]]
        must = f" (at least {' and '.join(of_class)})" if of_class else ""
        raise ValueError(f"too few patients to fit a site profile{what}: {counts['total']} ({counts['positive']} "
                         f"{positive}, {counts['negative']} {negative}); it needs {MIN_PATIENTS}, at least "
                         f"{MIN_PATIENTS_PER_CLASS} of each class: {more['total']} more patients{must}")
    return counts


# ---------------------------------------------------------------------------
# Fitting: calibration and threshold, cross-fitted by patient
# ---------------------------------------------------------------------------

def fit_calibration(frame: pd.DataFrame, threshold_method: str = classification.THRESHOLD_RULE,
                    seed: int = 0) -> Calibration:
    """The site's threshold (the run's rule on the raw probabilities) and
    calibration (core.inference.calibration.fit) from rows with y and raw."""
    y, raw = frame["y"].to_numpy(int), frame["raw"].to_numpy(float)
    raw_threshold = classification.choose_threshold(y, raw, method=threshold_method)
    rows = pd.DataFrame({"y_true": y, "prob": raw, "split": "val"})  # the site's slices in the role of validation
    fitted = calibration.fit(rows, raw_threshold, threshold_method, seed=seed)
    for run_words, site_words in SITE_WORDS.items():  # calibration.fit speaks of a run's validation split
        fitted.note = fitted.note.replace(run_words, site_words)
    return fitted


def cross_fit(frame: pd.DataFrame, threshold_method: str = classification.THRESHOLD_RULE, seed: int = 0,
              folds: int = FOLDS) -> pd.DataFrame:
    """Each row's probability and decision from a calibration and threshold
    fitted on the other folds' patients: frame's rows (same index) with fold,
    prob (calibrated) and decided (1: positive)."""
    from sklearn.model_selection import StratifiedKFold

    per_patient = frame.groupby("patient_id")["y"].first()
    k = min(folds, int(per_patient.value_counts().min()))
    out = frame.assign(fold=-1, prob=np.nan, decided=-1)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, held) in enumerate(splitter.split(per_patient.index, per_patient.to_numpy())):
        held_rows = frame["patient_id"].isin(per_patient.index[held])
        fitted = fit_calibration(frame[~held_rows], threshold_method, seed)
        raw = frame.loc[held_rows, "raw"].to_numpy(float)
        out.loc[held_rows, "fold"] = fold
        out.loc[held_rows, "prob"] = fitted.apply(raw)
        out.loc[held_rows, "decided"] = (raw >= fitted.raw_threshold).astype(int)
    return out


def _figures(y, prob, decided) -> dict:
    y, prob, decided = np.asarray(y, int), np.asarray(prob, float), np.asarray(decided, int)
    both = len(np.unique(y)) == 2
    return {"roc_auc": classification.binary_metrics(y, prob)["roc_auc"] if both else None,
            "sensitivity": float(decided[y == 1].mean()) if (y == 1).any() else None,
            "specificity": float(1 - decided[y == 0].mean()) if (y == 0).any() else None,
            "ece": calibration.expected_calibration_error(y, prob)}


def _patient_bootstrap(y, prob, decided, patients, n_boot: int, seed: int) -> dict:
    """95% percentile intervals of _figures over resamples of whole patients."""
    y, prob, decided = np.asarray(y, int), np.asarray(prob, float), np.asarray(decided, int)
    codes, uniques = pd.factorize(np.asarray(patients))
    rows_of = [np.flatnonzero(codes == c) for c in range(len(uniques))]
    rng = np.random.default_rng(seed)
    drawn = {name: [] for name in FIGURES}
    for _ in range(n_boot):
        rows = np.concatenate([rows_of[c] for c in rng.integers(0, len(uniques), len(uniques))])
        for name, value in _figures(y[rows], prob[rows], decided[rows]).items():
            if value is not None:
                drawn[name].append(value)
    return {name: [float(v) for v in np.percentile(values, [2.5, 97.5])] if values else None
            for name, values in drawn.items()}


def site_figures(frame: pd.DataFrame, prob, decided, n_boot: int | None = None, seed: int = 0) -> dict:
    """_figures of (prob, decided) on the frame's slices, with patient-level
    bootstrap CIs ("ci"), or ci None and "ci_note" below patient_level.MIN_PATIENTS_FOR_CI per class."""
    counts = patient_counts(frame)
    figures = _figures(frame["y"], prob, decided)
    if min(counts["negative"], counts["positive"]) < patient_level.MIN_PATIENTS_FOR_CI:
        return {**figures, "ci": None, "ci_note": patient_level.TOO_FEW}
    return {**figures, "ci": _patient_bootstrap(frame["y"], prob, decided, frame["patient_id"],
                                                n_boot or classification.N_BOOT, seed), "ci_note": None}


def _scan_settings(frame: pd.DataFrame, fitted: Calibration, aggregation: str, threshold_method: str) -> dict:
    """The scan threshold for predict-scan: the run's aggregation of the
    site-calibrated slice probabilities, its threshold chosen on the site's patients."""
    from core.inference import scan_decision

    patients = scan_decision.per_patient(frame.assign(y_true=frame["y"], prob=fitted.apply(frame["raw"])), aggregation)
    return {"aggregation": aggregation, "threshold_method": threshold_method, "patients": len(patients),
            "threshold": classification.choose_threshold(patients["y_true"], patients["prob"], threshold_method)}


def fit_profile(run_dir, name: str, sources, class_map: dict | None = None, replace: bool = False,
                n_boot: int | None = None, seed: int | None = None, report=lambda line: None,
                predictor=None) -> dict:
    """Fit site profile `name` of run_dir on `sources` (site_index), report
    its cross-fitted figures, store it (RUN/sites/NAME) and return it.
    ValueError below the minimum of patients (saying how many more are
    needed), for a bad name, or for an existing profile unless `replace`."""
    from core.inference import scan_decision, site_features
    from core.inference.predict import Predictor  # TensorFlow: only when a profile is fitted

    run_dir = Path(run_dir)
    folder = site_store.profile_dir(run_dir, name)
    if folder.exists() and not replace:
        raise ValueError(f"run {run_dir.name} already has a site profile {name!r}: remove it first "
                         f"(site-profile remove {name}) or replace it (--replace)")
    config = files.read_json(run_dir / "config.json", {})
    metrics = files.read_json(run_dir / "metrics.json") or {}
    negative, positive = storage.class_names(config, metrics)
    threshold_method = (metrics.get("threshold") or {}).get("method", classification.THRESHOLD_RULE)
    seed = int(config.get("seed", 0)) if seed is None else seed
    sources = [str(s) for s in ([sources] if isinstance(sources, (str, Path)) else sources)]
    index = site_labels.site_index(sources, negative, positive, class_map)
    require_patients(index, negative, positive)  # before any model is loaded
    report(f"{len(index)} slices of {patient_counts(index)['total']} patients"
           + (f" ({len(index.attrs['problems'])} unreadable, left out)" if index.attrs["problems"] else ""))
    predictor = predictor or Predictor.from_run(run_dir)
    through_model = site_features.score(predictor, index["path"].tolist(), index["relpath"].tolist(), report)
    if through_model["problems"]:  # the index checked every file: one changed since
        raise ValueError(through_model["problems"][0])
    refused = through_model["refused"]
    scored = index.assign(raw=through_model["raw"], refused=refused)
    used = scored[~scored["refused"]].reset_index(drop=True)  # refused slices get no probability in use either
    require_patients(used, negative, positive, what=" once the guard's refusals are left out")

    crossed = cross_fit(used, threshold_method, seed)
    deployed = calibration.for_run(run_dir)
    fitted = fit_calibration(used, threshold_method, seed)
    fitted.note = f"site profile {name}: {fitted.note}"
    aggregation = scan_decision.settings_for_run(run_dir)["aggregation"]
    profile = {
        "name": name, "run": run_dir.name, "fitted": storage.now(), "sources": sources,
        "class_map": class_map or {}, "labels": {"negative": negative, "positive": positive},
        "slices": len(used), "refused": int(refused.sum()), "problems": index.attrs["problems"],
        "patients": patient_counts(used), "threshold_method": threshold_method,
        "calibration": fitted.to_dict(), "raw_threshold": fitted.raw_threshold, "threshold": fitted.threshold,
        "scan": _scan_settings(used, fitted, aggregation, threshold_method),
        "cross_fitted": {
            "folds": int(crossed["fold"].nunique()),
            "deployed": site_figures(used, deployed.apply(used["raw"]),
                                     (used["raw"] >= storage.decision_threshold(metrics)).astype(int), n_boot, seed),
            "site": site_figures(used, crossed["prob"], crossed["decided"], n_boot, seed)},
        "minimums": {"patients": MIN_PATIENTS, "per_class": MIN_PATIENTS_PER_CLASS,
                     "per_class_for_ci": patient_level.MIN_PATIENTS_FOR_CI},
    }
    table = scored.assign(fold=np.nan, site_prob=np.nan)
    table.loc[~scored["refused"].to_numpy(), ["fold", "site_prob"]] = crossed[["fold", "prob"]].to_numpy()
    site_store.store(folder, profile, table.drop(columns=["path"]))
    return profile


# ---------------------------------------------------------------------------
# Plain words and a table
# ---------------------------------------------------------------------------

def summary(profile: dict) -> str:
    """What the profile is, in plain words."""
    labels, patients = profile["labels"], profile["patients"]
    fitted = profile["calibration"]
    text = (f"Site profile {profile['name']} of run {profile['run']}: fitted on {patients['total']} patients "
            f"({patients['positive']} {labels['positive']}, {patients['negative']} {labels['negative']}), "
            f"{profile['slices']} slices. Calibration: {fitted['method']}; threshold "
            f"{calibration.percent(profile['threshold'])} on the calibrated scale ({profile['threshold_method']}, "
            f"chosen on the site's slices). The figures below come from {profile['cross_fitted']['folds']} folds of "
            "patients: each patient was scored by a profile fitted without it.")
    ranking = profile["cross_fitted"]["deployed"]["roc_auc"]
    if ranking is not None and ranking < POOR_AUC:
        text += (f" Warning: the model ranks this site's slices at ROC-AUC {ranking:.2f} (below {POOR_AUC}): "
                 "a profile changes its calibration and threshold, not its ranking, and cannot make it useful "
                 "here; do not use this model at this site.")
    return text


def _value(figures: dict, key: str) -> str:
    value = figures[key]
    if value is None:
        return "n/a"
    if figures.get("ci_note"):
        return f"{value:.3f} ({figures['ci_note']})"
    low_high = (figures.get("ci") or {}).get(key)
    return f"{value:.3f} [{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else f"{value:.3f}"


def figures_table(profile: dict) -> pd.DataFrame:
    """One row per figure: as deployed (the run's calibration and threshold)
    and with the site profile (cross-fitted), each with its 95% CI."""
    crossed = profile["cross_fitted"]
    return pd.DataFrame([{"figure": label, "as deployed": _value(crossed["deployed"], key),
                          "site profile (cross-fitted)": _value(crossed["site"], key)}
                         for key, label in FIGURES.items()])
