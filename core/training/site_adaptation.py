"""Adapting the deployed model to a site with labelled scans: fine-tune it on
COVID-CT's training split plus the site's patients, and measure what that
changes on site patients it was not trained on.

The site's patients are split into folds (whole patients, stratified by
class). For each fold, the deployed model is fine-tuned (its own recipe,
starting from its weights: TrainConfig.start_from_run) on COVID-CT's
training split plus the site's other folds, and scores the fold's patients.
Every site patient so gets an "after" probability from a model that never
saw them, beside the deployed model's "before" probability. Then one more
run is fine-tuned on all the site's patients: the adapted model, deployable
for the site.

Each fold is an ordinary run (kill-safe, resumable) whose data are COVID-CT
and a staged copy of the fold's training patients (hard links where the file
system allows), listed as training images only: COVID-CT's validation split
chooses the epochs and the threshold, as for the deployed model.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from core.base import files, paths
from core.evaluation import classification, patient_level
from core.inference import calibration, external, site_labels
from core.runs import lock
from core.runs.train_config import TrainConfig
from core.training.fit import train

MIN_PATIENTS_PER_CLASS = 2  # per fold and class, one patient is held out and one trains
MAX_FOLDS = 5
ADAPT_EPOCHS = 5  # fine-tuning epochs at most (early stopping on COVID-CT's validation split)


def sites_dir() -> Path:
    return paths.artifacts_dir() / "sites"


def patient_folds(index: pd.DataFrame, folds: int | None, seed: int) -> np.ndarray:
    """A fold number per slice: whole patients, stratified by class. Refused
    below MIN_PATIENTS_PER_CLASS patients of each class per fold."""
    per_class = index.groupby("y")["patient_id"].nunique().reindex([0, 1], fill_value=0)
    most = int(per_class.min()) // (MIN_PATIENTS_PER_CLASS - 1) if per_class.min() >= MIN_PATIENTS_PER_CLASS else 0
    folds = folds or min(MAX_FOLDS, most)
    if folds < 2 or per_class.min() < folds:
        need = max(MIN_PATIENTS_PER_CLASS, folds or 2)
        raise ValueError(f"the site has {per_class[1]} positive and {per_class[0]} negative patients: adapting "
                         f"and measuring it needs at least {need} of each (whole patients are held out)")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold = np.empty(len(index), dtype=int)
    for number, (_, held_out) in enumerate(splitter.split(index, index["y"], index["patient_id"])):
        fold[held_out] = number
    return fold


def stage(index: pd.DataFrame, folder: Path, source: str, classes: tuple[str, str], as_training: bool) -> Path:
    """The slices of `index` as a dataset source folder <folder>/<source>/<class>/<patient>/<file>, the
    classes named as the model names them (negative, positive); hard links, else copies; listed as
    training images when `as_training`."""
    root = folder / source
    shutil.rmtree(root, ignore_errors=True)
    lists: dict[str, list[str]] = {}
    for row in index.itertuples():
        patient = files.check_name(str(row.patient_id).replace(":", "_").replace("/", "_"), "patient id", 200)
        label = classes[int(row.y)]
        target = root / label / patient / Path(row.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(row.path, target)
        except OSError:  # another file system, or links not allowed: copy
            shutil.copyfile(row.path, target)
        lists.setdefault(label, []).append(f"{patient}/{target.name}")
    if as_training:
        (root / "splits").mkdir()
        for label, names in lists.items():
            (root / "splits" / f"train_{label}.txt").write_text("\n".join(sorted(names)) + "\n")
    return root


def adaptation_config(deployed_dir: Path, site_source: Path, seed: int) -> TrainConfig:
    """The deployed recipe, started from its model, on COVID-CT plus the site's staged patients."""
    recipe = TrainConfig.from_dict(files.read_json(deployed_dir / "config.json", {}))
    sources = [str(folder) for folder in recipe.training_sources()] + [str(site_source)]
    return dataclasses.replace(recipe, data_dir=os.pathsep.join(sources),
                               start_from_run=str(deployed_dir), head_epochs=0,
                               finetune_epochs=min(ADAPT_EPOCHS, recipe.finetune_epochs or ADAPT_EPOCHS),
                               use_official_splits=True, seed=seed, holdout_source="", cv_folds=0, cv_fold=0)


def calibrated_scores(run_dir: Path, index: pd.DataFrame, name: str, report) -> pd.DataFrame:
    """The run's calibrated probabilities for the site slices staged in one folder, with
    the run's calibrated threshold."""
    out = external.evaluate_on(run_dir, index.attrs["staged"], name=name, report=report)
    scored = pd.read_csv(out / "predictions.csv")
    calibrate = calibration.for_run(run_dir)
    return scored.assign(prob=calibrate.apply(scored["prob"]), threshold=calibrate.threshold)


def adapt(deployed_dir, site_dirs: list, name: str, folds: int | None = None, seed: int = 0,
          report=print, runs_root=None) -> dict:
    """Fine-tune the deployed model for the site `name` and measure it on the
    site's held-out patients; returns (and stores in sites/<name>/adaptation.json)
    the before/after figures and the adapted run's id."""
    deployed_dir = Path(deployed_dir)
    name = files.check_name(name, "site name")
    labels = (files.read_json(deployed_dir / "metrics.json", {}) or {}).get("labels", {})
    classes = (labels.get("negative", "NonCOVID"), labels.get("positive", "COVID"))
    index = site_labels.site_index(site_dirs, *classes)
    fold = patient_folds(index, folds, seed)
    work = sites_dir() / name / "adaptation"
    work.mkdir(parents=True, exist_ok=True)
    # One lock for the whole adaptation (its runs train with exclusive=False): no other training slips in
    # between two folds, and a lock handed over by core.jobs.background.launch_adaptation is kept.
    lock.acquire_training_lock(f"site-{name}", runs_root)
    try:
        return _adapt_locked(deployed_dir, index, fold, work, name, classes, seed, report, runs_root)
    finally:
        lock.release_training_lock(runs_root)


def _adapt_locked(deployed_dir: Path, index: pd.DataFrame, fold: np.ndarray, work: Path, name: str,
                  classes: tuple[str, str], seed: int, report, runs_root) -> dict:

    everything = index.copy()
    everything.attrs["staged"] = stage(index, work / "all", name, classes, as_training=False)
    before = calibrated_scores(deployed_dir, everything, f"site-{name}", report)
    after = []
    for number in range(fold.max() + 1):
        report(f"site {name}: fold {number + 1} of {fold.max() + 1}")
        held_out = index[fold == number].copy()
        held_out.attrs["staged"] = stage(held_out, work / f"fold{number + 1}-held-out", name, classes,
                                         as_training=False)
        source = stage(index[fold != number], work / f"fold{number + 1}-training", name, classes,
                       as_training=True)
        run_dir = train(adaptation_config(deployed_dir, source, seed), name=f"site-{name}-fold{number + 1}",
                        report=report, runs_root=runs_root, exclusive=False)
        after.append(calibrated_scores(run_dir, held_out, f"site-{name}-held-out", report))
    source = stage(index, work / "adapted", name, classes, as_training=True)
    adapted = train(adaptation_config(deployed_dir, source, seed), name=f"site-{name}-adapted", report=report,
                    runs_root=runs_root, exclusive=False)
    result = {"site": name, "deployed": deployed_dir.name, "adapted_run": adapted.name, "folds": int(fold.max() + 1),
              "patients": int(index["patient_id"].nunique()), "slices": len(index),
              "before": site_figures(before, seed), "after": site_figures(pd.concat(after), seed)}
    files.write_json(sites_dir() / name / "adaptation.json", result)
    return result


def site_figures(scored: pd.DataFrame, seed: int = 0) -> dict:
    """Slice and patient figures of calibrated site probabilities (pooled over
    the models that made them): ROC-AUC, and sensitivity and specificity of
    each model's decisions at its own calibrated threshold, with 95% CIs that
    resample patients (none below patient_level.MIN_PATIENTS_FOR_CI), and the
    expected calibration error. A patient's probability is the mean of its
    slices', decided at the mean of their thresholds."""
    groups = scored["patient_id"]
    decided = (scored["prob"] >= scored["threshold"]).astype(float)
    ranked = classification.metrics_at(scored["y_true"], scored["prob"], 0.5, seed=seed, groups=groups)
    decisions = classification.metrics_at(scored["y_true"], decided, 0.5, seed=seed, groups=groups)
    patients = patient_level.per_patient(scored).merge(
        scored.groupby("patient_id", as_index=False)["threshold"].mean(), on="patient_id")
    patient_ranked = classification.metrics_at(patients["y_true"], patients["prob"], 0.5, seed=seed)
    patient_decided = classification.metrics_at(patients["y_true"],
                                                (patients["prob"] >= patients["threshold"]).astype(float), 0.5,
                                                seed=seed)
    shown = patient_level.enough_patients(patients)
    return {"slices": {"n": len(scored), **_figures(ranked, decisions, shown),
                       "ece": calibration.expected_calibration_error(scored["y_true"], scored["prob"])},
            "patients": {"n": len(patients), **_figures(patient_ranked, patient_decided, shown)}}


def _figures(ranked: dict, decided: dict, with_ci: bool) -> dict:
    """ROC-AUC from the probabilities, sensitivity and specificity from the decisions, each with its CI."""
    figures = {"roc_auc": ranked["roc_auc"], "sensitivity": decided["recall"],
               "specificity": decided["specificity"]}
    sources = {"roc_auc": ranked, "sensitivity": decided, "specificity": decided}
    metric = {"roc_auc": "roc_auc", "sensitivity": "recall", "specificity": "specificity"}
    for key, value in list(figures.items()):
        figures[f"{key}_ci"] = sources[key]["ci"][metric[key]] if with_ci else None
    return figures


def before_after_table(result: dict) -> pd.DataFrame:
    """The site's figures before (the deployed model) and after adaptation
    (models that never saw the patient), one row per level and figure."""
    rows = []
    for level in ("patients", "slices"):
        for figure in ("roc_auc", "sensitivity", "specificity", "ece"):
            if figure not in result["before"][level]:
                continue  # the calibration error is a slices' figure
            row = {"level": level, "figure": figure}
            for when in ("before", "after"):
                found = result[when][level]
                value, interval = found.get(figure), found.get(f"{figure}_ci")
                row[when] = _with_interval(value, interval)
            rows.append(row)
    return pd.DataFrame(rows)


def _with_interval(value, interval) -> str:
    if value is None:
        return "n/a (one class)"
    if not interval or interval[0] is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
