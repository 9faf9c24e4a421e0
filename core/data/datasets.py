"""Datasets: class folders (one or several sources) indexed into train/val/test
splits by patient, cross-validation folds, and counts. Splits keep each patient
in one split, as slices of one patient are near copies of each other and would
leak between train and test."""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from core.data.images import IMAGE_EXTENSIONS, ImageReadError, check_image

SPLITS = ("train", "val", "test")
METADATA_EXTENSIONS = (".csv", ".xlsx")
MIN_IMAGES_PER_CLASS = 2  # per class, after bad files are left out; fewer is an error

# Column names (lower case, '_'/'-' read as spaces) that hold the image file
# name or the patient in a metadata table.
FILE_NAME_COLUMNS = ("file name", "filename", "image name", "image", "file", "image path", "path")
PATIENT_COLUMNS = ("patient id", "patientid", "patient", "subject id", "subject")


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
        # Strata of source x class; with one source just the class, as before there were sources.
        strata = (index["y"] + 2 * pd.factorize(index["source"])[0]).to_numpy()[unsplit]
        index.loc[unsplit, "split"] = _grouped_split(strata, index["patient_id"][unsplit].to_numpy(),
                                                     seed, val_fraction, test_fraction)
        described.append(f"split by patient, stratified by {'source and ' if several else ''}class (seed {seed}, "
                         f"val {val_fraction}, test {test_fraction})")
    index.attrs["split_source"] = "; ".join(described)
    _require_enough(", ".join(str(f.resolve()) for f in folders), index, classes, problems)
    index.attrs["problems"] = [problems[relpath] for relpath in sorted(problems)]
    if problems:
        warnings.warn(f"{folders[0] if not several else 'datasets'}: left out {len(problems)} images or "
                      f"split-list entries (index.attrs['problems']):{_listing(problems)}")
    index = index.sort_values("relpath", ignore_index=True)
    return index[["path", "relpath", "label", "y", "split", "patient_id", "source"]]


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
    found = unreadable_images(index) if check_files else {}
    index = index[~index["relpath"].isin(found)].reset_index(drop=True)
    _require_enough(root, index, classes, found)
    index["y"] = (index["label"] == positive_class).astype(int)
    index["patient_id"] = patient_ids(root, index)
    index["source"] = root.name
    index["split"] = np.full(len(index), None, dtype=object)

    split_files = _find_split_files(root / "splits", classes) if use_official_splits else {}
    described = ""
    if split_files:
        index["split"] = _official_splits(root, index, split_files, found)
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


def list_class_images(root: Path) -> tuple[pd.DataFrame, list[str]]:
    """(path, relpath, label) of every image in the class folders of `root`
    (sub-folders included: patient folders), sorted by relpath; and the names
    of class folders that hold no image."""
    rows, empty = [], []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = len(rows)
        for path in sorted(folder.rglob("*")):
            # Hidden files include macOS "._x.png" resource forks, which are not images.
            if (path.is_file() and not path.name.startswith(".")
                    and path.suffix.lower() in IMAGE_EXTENSIONS):
                rows.append({"path": str(path), "relpath": path.relative_to(root).as_posix(),
                             "label": folder.name})
        if len(rows) == found:
            empty.append(folder.name)
    index = pd.DataFrame(rows, columns=["path", "relpath", "label"])
    return index.sort_values("relpath", ignore_index=True), empty


def _list_images(root: Path) -> pd.DataFrame:
    index, empty = list_class_images(root)
    classes = sorted(index["label"].unique())
    if len(classes) != 2:
        raise ValueError(f"{root}: expected exactly 2 class folders holding images "
                         f"({', '.join(IMAGE_EXTENSIONS)}), found {len(classes)}: {classes}"
                         f"{f'; folders without images: {empty}' if empty else ''}")
    return index


def patient_ids(root: Path, index: pd.DataFrame) -> pd.Series:
    """Patient per image from the metadata tables in root/meta, else from the
    patient sub-folder the image sits in; an image with neither is its own
    group (patient_id = relpath)."""
    patients = {}
    meta = root / "meta"
    tables = sorted(p for p in meta.glob("*") if p.suffix.lower() in METADATA_EXTENSIONS) \
        if meta.is_dir() else []
    for table_path in tables:
        for relpath, patient in _read_patient_table(table_path, index).items():
            patients.setdefault(relpath, patient)
    return index["relpath"].map(lambda relpath: patients.get(relpath) or _patient_folder(relpath) or relpath)


def _patient_folder(relpath: str) -> str | None:
    """The patient sub-folder an image sits in (COVID/person001/12.jpg ->
    "COVID/person001"), or None for an image directly in its class folder.
    The class stays in the id: two classes' "patient1" folders are not
    assumed to be one patient."""
    parts = relpath.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else None


def _read_patient_table(table_path: Path, index: pd.DataFrame) -> dict:
    """{relpath: patient id} for the rows of one metadata table that name an image."""
    if table_path.suffix.lower() == ".csv":
        table = pd.read_csv(table_path, dtype=str, encoding_errors="replace")
    else:
        table = pd.read_excel(table_path, dtype=str)
    columns = {str(c).strip().lower().replace("_", " ").replace("-", " "): c for c in table.columns}
    name_column = next((columns[c] for c in FILE_NAME_COLUMNS if c in columns), None)
    patient_column = next((columns[c] for c in PATIENT_COLUMNS if c in columns), None)
    if name_column is None or patient_column is None:
        warnings.warn(f"{table_path.name}: no file-name and patient-id columns found "
                      f"(columns: {list(table.columns)}); patients from it are not used")
        return {}
    table = table[[name_column, patient_column]].dropna()
    names = table[name_column].str.strip().str.replace("\\", "/").str.split("/").str[-1]
    patients = table[patient_column].str.strip()

    # Match each name within every class folder; a name found in several
    # classes (e.g. "1.png" in both) goes to the class this table describes.
    lookups = {label: _name_lookup(group) for label, group in index.groupby("label")}
    candidates = [[lookup[n] for lookup in lookups.values() if n in lookup] for n in names]
    table_label = _table_class(table_path, candidates, list(lookups))
    result, ambiguous = {}, 0
    for found, patient in zip(candidates, patients):
        if len(found) > 1:
            found = [r for r in found if r.split("/")[0] == table_label]
            ambiguous += len(found) != 1
        if len(found) == 1 and patient:
            result.setdefault(found[0], patient)
    if ambiguous:
        warnings.warn(f"{table_path.name}: {ambiguous} file names exist in several class folders "
                      "and the table does not say which class it describes; they are not used")
    return result


def _table_class(table_path: Path, candidates: list, classes: list) -> str | None:
    """The class a metadata table describes: the one named in its file name
    (NonCOVID-CT-MetaInfo.csv -> NonCOVID), else the one most of its
    unambiguous names belong to."""
    words = {w.lower() for w in re.split(r"[^0-9A-Za-z]+", table_path.stem)}
    named = [c for c in classes if c.lower() in words]
    if len(named) == 1:
        return named[0]
    labels = [found[0].split("/")[0] for found in candidates if len(found) == 1]
    return max(sorted(set(labels)), key=labels.count) if labels else None


def _name_lookup(index: pd.DataFrame) -> dict:
    """File name -> relpath, also by the name without its image extension
    (COVID-CT's xlsx lists some files without ".png"); ambiguous keys dropped."""
    keys = {}
    for relpath in index["relpath"]:
        file_name = relpath.rsplit("/", 1)[-1]
        stem = file_name[: len(file_name) - len(Path(file_name).suffix)]
        for key in {file_name, stem}:
            keys.setdefault(key, set()).add(relpath)
    return {key: next(iter(found)) for key, found in keys.items() if len(found) == 1}


def _find_split_files(splits_dir: Path, classes: list) -> dict:
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


def _official_splits(root: Path, index: pd.DataFrame, split_files: dict,
                     problems: dict) -> pd.Series:
    """Split per image from the lists; entries naming missing files are added
    to `problems` (those already left out as unreadable are skipped quietly)."""
    split_of, known = {}, set(index["relpath"])
    for (split, label), path in split_files.items():
        # Strip '\r' (CRLF files) and skip blank lines (and a missing final newline is fine).
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
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


def _grouped_split(y: np.ndarray, groups: np.ndarray, seed: int,
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
            raise ValueError(f"only {n_patients} patients left to make a {name} split of "
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


def source_counts(index: pd.DataFrame) -> pd.DataFrame:
    """Images per source and split (rows) x label (columns, then "total"), for a multi-source index."""
    counts = pd.crosstab([index["source"], index["split"]], index["label"], margins=True, margins_name="total")
    return counts.rename_axis(index=["source", "split"], columns="label")


def split_counts(index: pd.DataFrame) -> pd.DataFrame:
    """Images per split (rows train/val/test, then "total") x label (columns, then "total")."""
    counts = pd.crosstab(index["split"], index["label"], margins=True, margins_name="total")
    present = [s for s in SPLITS if s in counts.index]
    return counts.reindex(present + ["total"]).rename_axis(index="split", columns="label")
