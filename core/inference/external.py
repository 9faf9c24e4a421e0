"""External validation: score a trained run on a labelled dataset from
another source, at the threshold the run chose on its own validation split.

A model that scores well on its own test split can be near chance on slices
from a hospital it never saw (Roberts et al., Nature Machine Intelligence,
2021, found that failure in all 62 COVID imaging models they reviewed). This
module measures it. A result is stored in the run folder:

    external/<name>/status.json       state, progress (done / total), reason
    external/<name>/predictions.csv   path, label, y_true, prob, patient_id
    external/<name>/metrics.json      written last: a set with one is complete

Metrics are given per slice and, where patients are known (patient
sub-folders or a metadata table), per patient: each patient is decided as
Predict decides one uploaded scan (core.inference.scan_decision): the
calibrated slice probabilities aggregated by the run's scan aggregation, at
its scan threshold, so a patient's figure here is the answer Predict gives
for that patient's slices. Confidence
intervals resample whole patients, since one patient's slices are not
independent evidence.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from core.data import metadata
from core.data import datasets
from core.evaluation import patient_level
from core.evaluation import classification
from core.inference import scan_decision
from core.inference.calibration import Calibration
from core.runs import checks, storage
from core.base import files
from core.data.images import IMAGE_EXTENSIONS, load_image

EXTERNAL = "external"
BATCH_SIZE = 32  # images decoded and scored at a time: bounded memory on a large set


def parse_class_map(text: str | None) -> dict[str, str]:
    """"COVID19=COVID,non-COVID19=NonCOVID" -> {"COVID19": "COVID", "non-COVID19": "NonCOVID"}."""
    mapping = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        folder, sep, target = (part.strip() for part in item.partition("="))
        if not sep or not folder or not target:
            raise ValueError(f"class map entry {item.strip()!r} is not FOLDER=CLASS "
                             "(e.g. \"COVID19=COVID,non-COVID19=NonCOVID\")")
        mapping[folder] = target
    return mapping


def match_classes(folders: list[str], negative: str, positive: str, class_map: dict | None = None) -> dict:
    """{class folder: y} for a dataset's class folders, y = 1 for the run's
    positive class. A folder matches through `class_map` (folder -> class),
    else by name (ignoring case). One that matches neither is an error."""
    classes = {negative.lower(): 0, positive.lower(): 1}
    class_map = class_map or {}
    for folder, target in class_map.items():
        if target.lower() not in classes:
            raise ValueError(f"class map: {folder}={target}: {target!r} is not one of the run's classes "
                             f"{negative!r}, {positive!r}")
    matched, unmatched = {}, []
    for folder in folders:
        target = class_map.get(folder, folder)
        if target.lower() in classes:
            matched[folder] = classes[target.lower()]
        else:
            unmatched.append(folder)
    if unmatched:
        raise ValueError(f"class folder(s) {', '.join(map(repr, unmatched))} match none of the run's classes "
                         f"{negative!r}, {positive!r}: map them with --class-map "
                         f"\"{unmatched[0]}={positive}\" (or ={negative})")
    return matched


def index_external(data_dir, negative: str, positive: str, class_map: dict | None = None) -> pd.DataFrame:
    """The images of a labelled dataset folder (one sub-folder per class,
    optional patient sub-folders or metadata tables in meta/): path, relpath,
    label, y, patient_id. Images that cannot be read are left out and listed
    in attrs["problems"]. Class folders are distinct real folders
    (datasets.class_folders), and each of the run's two classes needs readable
    images: sensitivity, specificity and ROC-AUC need both."""
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"{root}: dataset folder not found")
    index, empty = datasets.list_class_images(root)
    if index.empty:
        raise ValueError(f"{root}: no images in class folders ({', '.join(IMAGE_EXTENSIONS)})")
    labels = sorted(index["label"].unique())
    y_of = match_classes(labels, negative, positive, class_map)
    problems = {**index.attrs["problems"], **datasets.unreadable_images(index)}
    index = index[~index["relpath"].isin(problems)].reset_index(drop=True)
    if index.empty:
        raise ValueError(f"{root}: none of its {len(problems)} images can be read (e.g. "
                         f"{next(iter(problems.values()))})")
    index["y"] = index["label"].map(y_of).astype(int)
    for y, wanted in enumerate((negative, positive)):
        if not (index["y"] == y).any():
            named = [f for f in (*labels, *empty) if (class_map or {}).get(f, f).lower() == wanted.lower()]
            raise ValueError(f"{root / named[0] if named else root}: no readable image of the run's class "
                             f"{wanted!r}{'' if named else ' (no class folder for it)'}: sensitivity, "
                             "specificity and ROC-AUC need images of both classes")
    index["patient_id"] = metadata.patient_ids(root, index)
    index.attrs["problems"] = [problems[relpath] for relpath in sorted(problems)]
    return index


def results_dir(run_dir, name: str) -> Path:
    return Path(run_dir) / EXTERNAL / storage.check_run_id(name)


def evaluate_on(run_dir, data_dir, name: str | None = None, class_map: dict | None = None,
                report=print, n_boot: int | None = None) -> Path:
    """Score the run's model on every image of `data_dir`, in batches, and store
    predictions and metrics under external/<name> (default: the folder's
    name); returns that folder. Progress goes to its status.json and to
    `report`. A set evaluated again is replaced. A dataset refused (its
    folders, a class without images), or a run that cannot predict (stopped
    before it evaluated), leaves nothing written in the run but the failed
    status of an evaluation the app launched."""
    from core.inference.predict import Predictor  # TensorFlow: only when a model is used

    run_dir = Path(run_dir)
    name = name or datasets.source_name(Path(data_dir).expanduser())
    out = results_dir(run_dir, name)
    checked = checks.check_run(run_dir)
    try:  # a refused set or run (one that cannot predict) writes nothing
        index = index_external(data_dir, *storage.class_names(checked["config"], checked["metrics"]), class_map)
        predictor = Predictor.from_run(run_dir)
    except BaseException as error:
        if out.is_dir():  # made by core.jobs.background.launch_external: the app shows why it failed
            storage.set_status(out, "failed", reason=str(error) or type(error).__name__)
        raise
    out.mkdir(parents=True, exist_ok=True)
    # Whatever was here belongs to an earlier evaluation: it stops counting as complete now.
    (out / "metrics.json").unlink(missing_ok=True)
    storage.set_status(out, "running", **storage.owner(os.getpid()), done=0, total=None, data_dir=str(data_dir),
                       started=storage.now())
    try:
        report(f"{len(index)} images in {data_dir}" + (f" ({len(index.attrs['problems'])} unreadable, left out)"
                                                        if index.attrs["problems"] else ""))
        probabilities = _score(predictor, index, out, report)
        predictions = pd.DataFrame({"path": index["relpath"], "label": index["label"], "y_true": index["y"],
                                    "prob": probabilities, "patient_id": index["patient_id"]})
        files.write_csv(out / "predictions.csv", predictions)
        metrics = external_metrics(predictions, predictor.threshold, n_boot=n_boot,
                                   seed=checked["config"].get("seed", 0),
                                   scan=(predictor.calibration, scan_decision.settings_for_run(run_dir)))
        metrics.update(name=name, data_dir=str(Path(data_dir).expanduser().resolve()), class_map=class_map or {},
                       problems=index.attrs["problems"], evaluated=storage.now(),
                       labels={"negative": predictor.negative_class, "positive": predictor.positive_class})
        files.write_json(out / "metrics.json", metrics)
    except BaseException as error:
        storage.set_status(out, "failed", reason=str(error) or type(error).__name__)
        raise
    storage.set_status(out, "completed", finished=storage.now())
    report(summary_line(metrics))
    return out


def _score(predictor, index: pd.DataFrame, out: Path, report) -> np.ndarray:
    """Probabilities for the index's images, decoded and scored BATCH_SIZE at a time."""
    probabilities = np.empty(len(index))
    started = time.monotonic()
    for start in range(0, len(index), BATCH_SIZE):
        rows = index.iloc[start:start + BATCH_SIZE]
        images = [load_image(path, name=relpath) for path, relpath in zip(rows["path"], rows["relpath"])]
        scored = predictor.predict_images(images, rows["relpath"].tolist())
        # Raw model probabilities, decided at the run's raw threshold: the
        # scale of the run's own predictions.csv and test metrics.
        probabilities[start:start + len(rows)] = [prediction.raw_probability for prediction in scored]
        done = start + len(rows)
        storage.set_status(out, "running", done=done, total=len(index))
        report(f"scored {done}/{len(index)} images ({done / (time.monotonic() - started):.1f} images/s)")
    return probabilities


def external_metrics(predictions: pd.DataFrame, threshold: float, n_boot: int | None = None,
                     seed: int = 0, scan: tuple[Calibration, dict] | None = None) -> dict:
    """Slice-level metrics at `threshold` (the raw scale of predictions' prob)
    with CIs resampled by patient, and, where some patient has several slices,
    the same per patient as Predict decides a scan: `scan` is (the run's
    calibration, its scan settings); without it, the mean of the
    probabilities at `threshold`. JSON-serialisable:

    {"threshold": value, "slice": {"n", "patients", "at_threshold": {..., "ci"}},
     "patient": {"n", "aggregation", "threshold" (calibrated), "at_threshold": {..., "ci"}} or None}

    Below patient_level.MIN_PATIENTS_FOR_CI patients of a class the CIs are
    [None, None] and each level says why in "ci_note".
    """
    slices = {"n": len(predictions), "patients": int(predictions["patient_id"].nunique()),
              "at_threshold": classification.metrics_at(predictions["y_true"], predictions["prob"], threshold,
                                                  n_boot=n_boot, seed=seed, groups=predictions["patient_id"])}
    patients = None
    if slices["patients"] < len(predictions):
        calibrated, settings = scan or (Calibration(raw_threshold=threshold), {"aggregation": "mean",
                                                                             "threshold": threshold})
        per_patient = patient_probabilities(predictions, calibrated, settings["aggregation"])
        patients = {"n": len(per_patient), "aggregation": settings["aggregation"],
                    "threshold": float(settings["threshold"]),
                    "at_threshold": classification.metrics_at(per_patient["y_true"], per_patient["prob"],
                                                              settings["threshold"], n_boot=n_boot, seed=seed)}
    if not patient_level.enough_patients(patient_level.per_patient(predictions)):
        for level in (slices, patients):  # a bootstrap over a few patients gives no interval worth drawing
            if level:
                level["at_threshold"]["ci"] = {key: [None, None] for key in level["at_threshold"]["ci"]}
                level["ci_note"] = patient_level.TOO_FEW
    return {"threshold": float(threshold), "slice": slices, "patient": patients}


def patient_probabilities(predictions: pd.DataFrame, calibrated: Calibration, aggregation: str) -> pd.DataFrame:
    """One row per patient (core.evaluation.patient_level.per_patient): its
    calibrated slice probabilities aggregated as Predict aggregates one scan."""
    return patient_level.per_patient(predictions.assign(prob=calibrated.apply(predictions["prob"])), aggregation)


def summary_line(metrics: dict, calibrated_threshold: float | None = None) -> str:
    """"SY575: 48 slices, ROC-AUC 0.71 [0.40, 0.95], ... ; 4 patients, ..." for the CLI and logs.
    With `calibrated_threshold` (the run's threshold on the calibrated scale that
    the app shows probabilities on) the line quotes that one, not the raw one."""
    def part(level):
        at = level["at_threshold"]
        auc, (low, high) = at["roc_auc"], at["ci"]["roc_auc"]
        interval = f" ({level['ci_note']})" if level.get("ci_note") else f" [{_fmt(low)}, {_fmt(high)}]"
        auc_text = "ROC-AUC n/a (one class)" if auc is None else f"ROC-AUC {auc:.3f}{interval}"
        return (f"{auc_text}, sensitivity {at['recall']:.3f}, specificity {at['specificity']:.3f}, "
                f"accuracy {at['accuracy']:.3f}")

    line = f"{metrics['name']}: {metrics['slice']['n']} slices: {part(metrics['slice'])}"
    if metrics.get("patient"):
        patients = metrics["patient"]
        how = patient_level.AGGREGATIONS.get(patients["aggregation"], patients["aggregation"])
        at = f" at the scan threshold {patients['threshold']:.0%}" if "threshold" in patients else ""
        line += f"; {patients['n']} patients (each as one scan: {how}{at}): {part(patients)}"
    if calibrated_threshold is not None:
        return line + (f"; threshold {calibrated_threshold:.0%} on the calibrated scale (the run's, chosen on "
                       "its validation split)")
    return line + f"; threshold {metrics['threshold']:.3f} on the model's raw outputs (the run's, chosen on its " \
                  "validation split)"


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def list_external(run_dir) -> list[dict]:
    """The run's external sets, by name: {"name", "state", "status", "metrics"
    (None until complete)}. A set whose process died shows as "interrupted"."""
    folder = Path(run_dir) / EXTERNAL
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            status = _read(path / "status.json") or {}
            metrics = _read(path / "metrics.json")
        except ValueError as error:  # a damaged file: shown with its reason, never breaks the listing
            found.append({"name": path.name, "state": "damaged", "status": {"reason": str(error)},
                          "metrics": None})
            continue
        state = "completed" if metrics else status.get("state", "unknown")
        if state == "running" and not storage.pid_alive(status.get("pid"), status.get("pid_start")):
            state = "interrupted"
        found.append({"name": path.name, "state": state, "status": status, "metrics": metrics})
    return found


def _read(path: Path) -> dict | None:
    """A JSON object file, None when missing; ValueError naming the file when it is not one."""
    try:
        value = files.read_json(path)
    except (ValueError, OSError) as error:
        raise ValueError(f"{path.parent.name}/{path.name}: not readable JSON ({error})") from None
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{path.parent.name}/{path.name}: not a JSON object")
    return value


def read_predictions(run_dir, name: str) -> pd.DataFrame:
    return checks.read_table(results_dir(run_dir, name) / "predictions.csv", run_dir)


def read_metrics(run_dir, name: str) -> dict | None:
    """A stored external set's metrics.json (None while it is not complete)."""
    return _read(results_dir(run_dir, name) / "metrics.json")
