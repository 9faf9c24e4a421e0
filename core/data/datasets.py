"""Datasets: class folders (one or several sources) indexed into train/val/test
splits by patient, cross-validation folds, and counts. Splits keep each patient
in one split, as slices of one patient are near copies of each other and would
leak between train and test."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from core.base import files
from core.data.images import IMAGE_EXTENSIONS, check_image
from core.data.limits import ImageReadError
from core.data.metadata import patient_ids
from core.data.splits import SPLITS, TooFewPatients, find_split_files, grouped_split, official_splits

MIN_IMAGES_PER_CLASS = 2  # per class, after bad files are left out; fewer is an error


def source_name(folder) -> str:
    """What a source is called: its dataset folder's name."""
    return Path(folder).resolve().name


def source_dirs(data_dir) -> list[Path]:
    """The dataset folders named by `data_dir`: one path, several joined with
    os.pathsep (as in $COVIDCT_DATA or the CLI's --data-dir), or a list."""
    parts = data_dir if isinstance(data_dir, (list, tuple)) else str(data_dir).split(os.pathsep)
    folders = [Path(part.strip()).expanduser() for part in map(str, parts) if part.strip()]
    if not folders:
        raise ValueError("no dataset folder given")
    names = [source_name(folder) for folder in folders]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"two dataset folders share the name {repeated[0]!r}: each source is known by its "
                         "folder's name, so rename one")
    return folders


def index_dataset(root, positive_class: str = "COVID", seed: int = 0,
                  val_fraction: float = 0.15, test_fraction: float = 0.2,
                  use_official_splits: bool = True, check_files: bool = True) -> pd.DataFrame:
    """One row per image: path, relpath, label, y, split, patient_id, source (sorted by relpath).

    `root` is a dataset folder, or several (source_dirs): each image keeps
    its `source`, the name of its folder. With several, relpath and patient_id
    start with the source ("COVID-CT/COVID/1.png", "COVID-CT:patient 7"), so
    they stay unique, and every source must have the same two class folders.

    A source with split lists in root/splits (and use_official_splits) keeps
    them; the images of the other sources are split together, stratified by
    source and class and grouped by patient, deterministic for `seed`.
    df.attrs["split_source"] says which.

    Bad input is left out and reported, all of it at once: images that
    check_image refuses (check_files=True; under 1 s for COVID-CT's 746) and
    split-list entries naming files that do not exist. df.attrs["problems"]
    lists "relpath: reason" for each, and a warning says how many. ValueError
    if too few remain to train: a class with fewer than MIN_IMAGES_PER_CLASS
    images, or none in the train split.
    """
    folders = source_dirs(root)
    several = len(folders) > 1
    parts, problems, described = [], {}, []
    for folder in folders:
        part, described_split = _index_source(folder, positive_class, use_official_splits, check_files,
                                              problems, prefix=several)
        parts.append(part)
        if described_split:
            described.append(described_split)
    index = pd.concat(parts, ignore_index=True)
    classes = sorted(index["label"].unique())
    if len(classes) != 2:
        raise ValueError(f"the dataset folders {', '.join(str(f) for f in folders)} do not share the same two "
                         f"class folders: found {classes}")

    unsplit = index["split"].isna().to_numpy()
    if unsplit.any():
        split, how = _split_unlisted(index, unsplit, several, seed, val_fraction, test_fraction)
        index.loc[unsplit, "split"] = split
        described.append(how)
    index.attrs["split_source"] = "; ".join(described)
    _require_enough(", ".join(str(f.resolve()) for f in folders), index, classes, problems)
    index.attrs["problems"] = [problems[relpath] for relpath in sorted(problems)]
    if problems:
        warnings.warn(f"{folders[0] if not several else 'datasets'}: left out {len(problems)} images or "
                      f"split-list entries (index.attrs['problems']):{_listing(problems)}")
    index = index.sort_values("relpath", ignore_index=True)
    return index[["path", "relpath", "label", "y", "split", "patient_id", "source"]]


def _split_unlisted(index: pd.DataFrame, unsplit: np.ndarray, several: bool, seed: int, val_fraction: float,
                    test_fraction: float) -> tuple[np.ndarray, str]:
    """The splits of the images no split list names, and how they were made.

    By patient, stratified by source and class. Where those patients are too
    few to give validation and test splits that each hold both classes (a
    split of one class can choose no threshold and has no ROC-AUC), and the
    other sources bring their own validation and test splits, they all go to
    train: so COVID-CT plus a few external patients (leave-one-source-out)
    trains, validated and tested on COVID-CT's lists. Otherwise ValueError
    naming the sources and the reason."""
    part = index[unsplit]
    # Strata of source x class; with one source just the class, as before there were sources.
    strata = (part["y"] + 2 * pd.factorize(part["source"])[0]).to_numpy()
    labels = part["y"].to_numpy()
    patients, names = part["patient_id"].nunique(), ", ".join(sorted(part["source"].unique()))
    try:
        split = grouped_split(strata, part["patient_id"].to_numpy(), seed, val_fraction, test_fraction)
        one_class = [name for name in ("val", "test")
                     if (split == name).any() and len(set(labels[split == name])) < 2]
        if one_class:
            raise TooFewPatients(f"its {' and '.join(one_class)} split would hold one class only")
    except TooFewPatients as error:
        listed = set(index.loc[~unsplit, "split"])
        if not {"val", "test"} <= listed:
            raise ValueError(f"{names}: {patients} patients cannot be split into train, validation and test by "
                             f"patient: {error}") from None
        return (np.full(len(part), "train", dtype=object),
                f"{names}: all {patients} patients in train, too few to split ({error})")
    return split, (f"split by patient, stratified by {'source and ' if several else ''}class (seed {seed}, "
                   f"val {val_fraction}, test {test_fraction})")


def _index_source(root: Path, positive_class: str, use_official_splits: bool, check_files: bool,
                  problems: dict, prefix: bool) -> tuple[pd.DataFrame, str]:
    """One dataset folder's images with labels, patients and, where it has
    split lists, their split (else NaN); adds what it leaves out to
    `problems`. Returns the index and how its split was made ("" for none)."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise ValueError(f"{root}: dataset folder not found")
    index = _list_images(root)
    classes = sorted(index["label"].unique())
    if positive_class not in classes:
        raise ValueError(f"{root}: positive class {positive_class!r} is not one of the "
                         f"class folders {classes}")
    found = {**index.attrs["problems"], **(unreadable_images(index) if check_files else {})}
    index = index[~index["relpath"].isin(found)].reset_index(drop=True)
    _require_enough(root, index, classes, found)
    index["y"] = (index["label"] == positive_class).astype(int)
    index["patient_id"] = patient_ids(root, index)
    index["source"] = root.name
    index["split"] = np.full(len(index), None, dtype=object)

    split_files = find_split_files(root / "splits", classes) if use_official_splits else {}
    described = ""
    if split_files:
        index["split"] = official_splits(root, index, split_files, found)
        described = "split lists in " + (root / "splits").as_posix()
    if prefix:  # several sources: keep relpaths and patients unique across them
        found = {f"{root.name}/{relpath}": f"{root.name}/{reason}" for relpath, reason in found.items()}
        index["relpath"] = root.name + "/" + index["relpath"]
        index["patient_id"] = root.name + ":" + index["patient_id"]
    problems.update(found)
    return index, described


def resolve_image(data_dir, relpath: str, holdout_source: str = "") -> Path:
    """The file of an index's relpath: under the dataset folder, or, with
    several sources, under the source its relpath starts with. A run that
    held a source out indexed only the others (TrainConfig.training_sources)."""
    folders = [folder for folder in source_dirs(data_dir) if source_name(folder) != holdout_source]
    if len(folders) == 1:
        return folders[0] / relpath
    source, _, rest = relpath.partition("/")
    by_name = {source_name(folder): folder for folder in folders}
    if source not in by_name:
        raise ValueError(f"{relpath}: its source {source!r} is not one of the dataset folders {sorted(by_name)}")
    return by_name[source] / rest


def unreadable_images(index: pd.DataFrame) -> dict:
    """{relpath: "relpath: reason"} for the images load_image would refuse."""
    problems = {}
    for path, relpath in zip(index["path"], index["relpath"]):
        try:
            check_image(path, name=relpath)
        except ImageReadError as error:
            problems[relpath] = str(error)
    return problems


def _require_enough(root: Path, index: pd.DataFrame, classes: list, problems: dict) -> None:
    """ValueError, with every problem found, if a class has too few images to
    train on (overall, and in the train split once there is one)."""
    counts = index["label"].value_counts()
    short = [f"{label} has {counts.get(label, 0)} images (need {MIN_IMAGES_PER_CLASS})"
             for label in classes if counts.get(label, 0) < MIN_IMAGES_PER_CLASS]
    if "split" in index:
        in_train = index.loc[index["split"] == "train", "label"].value_counts()
        short += [f"{label} has no images in the train split" for label in classes
                  if label not in in_train]
    if short:
        left_out = f"; {len(problems)} left out:{_listing(problems)}" if problems else ""
        raise ValueError(f"{root}: too few images to train: {'; '.join(short)}{left_out}")


def _listing(problems: dict) -> str:
    return "".join(f"\n  {problems[relpath]}" for relpath in sorted(problems))


def class_folders(root: Path) -> list[Path]:
    """The class folders of a dataset folder (its sub-folders, less hidden
    ones): each a distinct real folder, a link among them only where it leads
    to a folder inside `root` that is neither `root`, nor holds another class
    folder, nor lies in one; ValueError naming the folder otherwise."""
    folders = sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))
    real = {folder: os.path.realpath(folder) for folder in folders}
    for folder in folders:
        if files.outside(folder, root) or real[folder] == os.path.realpath(root):
            raise ValueError(f"{folder}: a link to {real[folder]}, not a class folder inside {root}; "
                             "each class needs a folder of its own")
        for other in folders:
            if other != folder and not files.outside(real[other], real[folder]):
                raise ValueError(f"{folder}: the same folder as, or a folder holding, the class folder {other.name} "
                                 f"(links lead both to {real[other]}); each class needs a folder of its own")
    return folders


def list_class_images(root: Path) -> tuple[pd.DataFrame, list[str]]:
    """(path, relpath, label) of every image in the class folders of `root`
    (sub-folders included: patient folders), sorted by relpath; and the names
    of class folders that hold no image. A file that may not be read (a link
    out of its class folder, a FIFO, a device: core.base.files.files_under)
    is left out, with its reason in attrs["problems"] ({relpath: "relpath: reason"}), and so is a file
    whose name is not UTF-8 text (its bytes written as \\xff there)."""
    rows, empty, problems = [], [], {}
    for folder in class_folders(root):
        found = len(rows)
        for path, problem in files.files_under(folder):
            # Hidden files include macOS "._x.png" resource forks, which are not images.
            if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            relpath = f"{folder.name}/{path.relative_to(folder).as_posix()}"
            if files.as_text(relpath) != relpath:  # bytes no table can hold
                relpath = files.as_text(relpath)
                problem = "its name is not UTF-8 text, which the index's tables cannot hold: rename it"
            if problem:
                problems[relpath] = f"{relpath}: {problem}"
            else:
                rows.append({"path": str(path), "relpath": relpath, "label": folder.name})
        if len(rows) == found:
            empty.append(folder.name)
    index = pd.DataFrame(rows, columns=["path", "relpath", "label"]).sort_values("relpath", ignore_index=True)
    index.attrs["problems"] = problems
    return index, empty


def _list_images(root: Path) -> pd.DataFrame:
    index, empty = list_class_images(root)
    classes = sorted(index["label"].unique())
    if len(classes) != 2:
        raise ValueError(f"{root}: expected exactly 2 class folders holding images "
                         f"({', '.join(IMAGE_EXTENSIONS)}), found {len(classes)}: {classes}"
                         f"{f'; folders without images: {empty}' if empty else ''}")
    return index


def source_counts(index: pd.DataFrame) -> pd.DataFrame:
    """Images per source and split (rows) x label (columns, then "total"), for a multi-source index."""
    counts = pd.crosstab([index["source"], index["split"]], index["label"], margins=True, margins_name="total")
    return counts.rename_axis(index=["source", "split"], columns="label")


def split_counts(index: pd.DataFrame) -> pd.DataFrame:
    """Images per split (rows train/val/test, then "total") x label (columns, then "total")."""
    counts = pd.crosstab(index["split"], index["label"], margins=True, margins_name="total")
    present = [s for s in SPLITS if s in counts.index]
    return counts.reindex(present + ["total"]).rename_axis(index="split", columns="label")
