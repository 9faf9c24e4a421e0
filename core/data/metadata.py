"""Which patient each slice belongs to: from a metadata table (CSV/XLSX in
meta/), else a patient sub-folder, else the file itself. Splits and
confidence intervals group by it, as slices of one patient are near copies."""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import pandas as pd

from core.base import files
from core.data.limits import MAX_FILE_BYTES


METADATA_EXTENSIONS = (".csv", ".xlsx")


# Column names (lower case, '_'/'-' read as spaces) that hold the image file
# name or the patient in a metadata table.
FILE_NAME_COLUMNS = ("file name", "filename", "image name", "image", "file", "image path", "path")


PATIENT_COLUMNS = ("patient id", "patientid", "patient", "subject id", "subject")


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
    content = io.BytesIO(files.read_regular(table_path, MAX_FILE_BYTES))  # a regular file, within the bound
    if table_path.suffix.lower() == ".csv":
        table = pd.read_csv(content, dtype=str, encoding_errors="replace")
    else:
        table = pd.read_excel(content, dtype=str)
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
