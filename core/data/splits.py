"""Train/val/test splits and cross-validation folds that keep each patient
on one side: a dataset's own split lists where it has them, else a split
stratified by class and grouped by patient."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from core.base import files
from core.data.limits import MAX_FILE_BYTES


SPLITS = ("train", "val", "test")


def find_split_files(splits_dir: Path, classes: list) -> dict:
    """{(split, class): path} for lists named like trainCT_COVID.txt: the name
    starts with the split, and the class follows the last '_'."""
    if not splits_dir.is_dir():
        return {}
    found = {}
    for path in sorted(splits_dir.glob("*.txt")):
        split = next((s for s in SPLITS if path.name.lower().startswith(s)), None)
        if split is None or "_" not in path.stem:
            continue
        class_name = path.stem.rsplit("_", 1)[1]
        label = next((c for c in classes if c.lower() == class_name.lower()), None)
        if label is None:
            raise ValueError(f"{path}: class {class_name!r} is not one of the class folders {classes}")
        if (split, label) in found:
            raise ValueError(f"{path}: a second list for {split}/{label} "
                             f"(first: {found[split, label].name})")
        found[split, label] = path
    return found


def official_splits(root: Path, index: pd.DataFrame, split_files: dict,
                     problems: dict) -> pd.Series:
    """Split per image from the lists; entries naming missing files are added
    to `problems` (those already left out as unreadable are skipped quietly)."""
    split_of, known = {}, set(index["relpath"])
    for (split, label), path in split_files.items():
        # Strip '\r' (CRLF files) and skip blank lines (and a missing final newline is fine).
        text = files.read_regular(path, MAX_FILE_BYTES).decode("utf-8-sig")  # a regular file, within the bound
        names = [line.strip() for line in text.splitlines()]
        for relpath in sorted({f"{label}/{n}" for n in names if n}):
            if relpath not in known:
                if relpath not in problems:
                    problems[relpath] = (f"{relpath}: listed in "
                                         f"{path.relative_to(root).as_posix()} but not found")
            elif split_of.setdefault(relpath, split) != split:
                raise ValueError(f"{path}: {relpath} is also listed in split {split_of[relpath]!r}")
    unlisted = index.loc[~index["relpath"].isin(split_of), "relpath"].tolist()
    if unlisted:
        raise ValueError(f"{root / 'splits'}: {len(unlisted)} images are in no split list "
                         f"(e.g. {', '.join(unlisted[:5])}); add them to a list, or pass "
                         f"use_official_splits=False to split by patient")
    return index["relpath"].map(split_of)


class TooFewPatients(ValueError):
    """Too few patients to hold out a split of whole patients."""


def grouped_split(y: np.ndarray, groups: np.ndarray, seed: int,
                   val_fraction: float, test_fraction: float) -> np.ndarray:
    """Hold out test, then val, each as one fold of a StratifiedGroupKFold.

    A fraction f becomes 1 of round(1/f) folds of whole patients, so the sizes
    are close to, not exactly, the fractions (0.15 of what is left after a 0.2
    test split gives 5 folds: val is 16% of all images).
    """
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) "
                         "must be >= 0 and add up to less than 1")
    split = np.full(len(y), "train", dtype=object)
    remaining = np.arange(len(y))
    for name, fraction in (("test", test_fraction), ("val", val_fraction / (1 - test_fraction))):
        if fraction <= 0:
            continue
        n_folds = max(2, round(1 / fraction))
        n_patients = len(np.unique(groups[remaining]))
        if n_patients < n_folds:
            raise TooFewPatients(f"only {n_patients} patients left to make a {name} split of "
                             f"{fraction:.0%}: need at least {n_folds}")
        folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        _, held_out = next(folds.split(remaining, y[remaining], groups[remaining]))
        split[remaining[held_out]] = name
        remaining = remaining[split[remaining] == "train"]
    return split


def cross_validation_split(index: pd.DataFrame, folds: int, fold: int, seed: int = 0) -> pd.DataFrame:
    """The index with its train and validation images regrouped for k-fold
    cross-validation: `folds` folds of whole patients, stratified by class
    (StratifiedGroupKFold, shuffled with `seed`); fold `fold` (0-based)
    becomes the validation split, the others train. Test images stay as
    they are, in no fold. Every train + val image validates in exactly one
    fold, so k runs score a recipe on all of them instead of on one small
    validation split."""
    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"fold {fold} of {folds}: need at least 2 folds and 0 <= fold < folds")
    pool = index.index[index["split"].isin(["train", "val"])].to_numpy()
    n_patients = index.loc[pool, "patient_id"].nunique()
    if n_patients < folds:
        raise ValueError(f"only {n_patients} patients in train + val: cannot make {folds} folds")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    _, held_out = list(splitter.split(pool, index.loc[pool, "y"], index.loc[pool, "patient_id"]))[fold]
    regrouped = index.copy()
    regrouped.loc[pool, "split"] = "train"
    regrouped.loc[pool[held_out], "split"] = "val"
    regrouped.attrs = dict(index.attrs, split_source=f"{index.attrs.get('split_source', 'split')}; train + val "
                                                     f"regrouped by patient, fold {fold + 1} of {folds} "
                                                     f"validates (seed {seed})")
    return regrouped
