"""A site's slices, and the deployed model's validation slices, through the
model: the pooled features and raw probabilities the site check compares
(core.inference.site_check), read in bounded batches."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from core.base import files
from core.base.files import files_under
from core.data.images import IMAGE_EXTENSIONS, load_image
from core.data.limits import ImageReadError
from core.inference.ood import image_problems
from core.runs import dataset


REFERENCE_FILE = "site_reference.npz"


BATCH_SIZE = 32       # slices decoded and scored at a time: bounded memory on a large site


MANIFEST = "manifest.csv"  # in a site folder: path and patient columns name its slices' patients


def _looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def site_files(folder) -> tuple[list[str], list[str | None]]:
    """(files, patient of each) of a site folder, searched recursively: the
    images and DICOM files (PACS exports often have no extension). A
    manifest.csv with path and patient columns names the patients; else a
    file's patient is the folder it sits in (one sub-folder per patient),
    and a file directly in `folder` is its own (None)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ValueError(f"{root}: folder not found")
    manifest = root / MANIFEST
    if manifest.is_file():
        table = pd.read_csv(manifest, dtype=str)
        if {"path", "patient"} <= set(table.columns):
            table = table.dropna(subset=["path"])
            patients = [None if pd.isna(patient) else patient for patient in table["patient"]]
            return [str(root / path) for path in table["path"]], patients
    files = []
    for path, problem in files_under(root):  # regular files only, links kept inside the folder
        hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
        if problem is None and not hidden and (path.suffix.lower() in IMAGE_EXTENSIONS or
                                               (not path.suffix and _looks_like_dicom(path))):
            files.append(path)
    if not files:
        raise ValueError(f"{root}: no images or DICOM files in it")
    return [str(p) for p in files], [None if p.parent == root else p.parent.relative_to(root).as_posix()
                                     for p in files]


def score(predictor, sources, names, report=lambda line: None) -> dict:
    """Decode and score `sources` (paths, bytes or decoded uint8 images)
    BATCH_SIZE at a time: {"kept" (indices read), "raw", "features",
    "refused" (per kept slice, by the guard), "problems" ("file: problem"
    for each one that cannot be read)}."""
    kept, raw, features, refused, problems = [], [], [], [], []
    for start in range(0, len(sources), BATCH_SIZE):
        images, rows = [], []
        for i in range(start, min(start + BATCH_SIZE, len(sources))):
            try:
                source = sources[i]
                images.append(source if isinstance(source, np.ndarray) else load_image(source, name=names[i]))
                rows.append(i)
            except (ImageReadError, OSError) as error:
                problems.append(str(error))
        if not images:
            continue
        batch_raw, batch_features = predictor.raw_and_features(images)
        guard = predictor.guard
        reasons = guard.problems(images, batch_features) if guard else [image_problems(i) for i in images]
        kept += rows
        raw.append(batch_raw)
        features.append(batch_features)
        refused += [bool(r) for r in reasons]
        report(f"scored {min(start + BATCH_SIZE, len(sources))}/{len(sources)} slices")
    width = predictor.model.get_layer("head_pool").output.shape[-1]
    return {"kept": kept, "raw": np.concatenate(raw) if raw else np.zeros(0),
            "features": np.concatenate(features) if features else np.zeros((0, width), np.float32),
            "refused": np.asarray(refused, bool), "problems": problems}


def _validation_index(run_dir: Path) -> pd.DataFrame:
    index = dataset.run_index_of(run_dir)
    return index[index["split"] == "val"].reset_index(drop=True)


def reference(predictor, report=lambda line: None) -> dict:
    """The run's validation slices through its model: {"features", "raw",
    "patients"}, from RUN/site_reference.npz, or built now and stored there."""
    run_dir = Path(predictor.run_dir)
    path = run_dir / REFERENCE_FILE
    if path.exists() and os.path.getmtime(path) >= os.path.getmtime(run_dir / "model.keras"):
        with np.load(path) as stored:
            return {key: stored[key] for key in ("features", "raw", "patients")}
    val = _validation_index(run_dir)
    report(f"site-check reference: {len(val)} validation slices of run {run_dir.name}, through its model")
    scored = score(predictor, val["path"].tolist(), val["relpath"].tolist(), report)
    if scored["problems"]:
        raise ValueError(f"run {run_dir.name}: a validation slice cannot be read: {scored['problems'][0]}")
    built = {"features": scored["features"].astype(np.float32), "raw": scored["raw"].astype(np.float32),
             "patients": np.array(val["patient_id"].astype(str).tolist(), dtype=str)}  # no pickled objects
    try:
        files.save_npz(path, **built)  # atomic, as the guard's reference
    except OSError:
        pass  # a read-only run folder: built again next time
    return built
