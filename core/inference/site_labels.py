"""A site's labelled slices: folders (one per class, patient sub-folders) or
manifest CSVs (path, label, patient), indexed with their patients, as the
site profile and site adaptation read them."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.data import datasets
from core.inference import external


MANIFEST = "manifest.csv"


def _manifest(path: Path) -> Path | None:
    """The manifest CSV a source names (the file itself, or DIR/manifest.csv)
    when it has path, label and patient columns; None otherwise."""
    table_path = path if path.is_file() else path / MANIFEST
    if not table_path.is_file():
        return None
    columns = set(pd.read_csv(table_path, dtype=str, nrows=0).columns)
    if {"path", "label", "patient"} <= columns:
        return table_path
    if path.is_file():
        raise ValueError(f"{path}: a site manifest needs path, label and patient columns (has {sorted(columns)})")
    return None


def _manifest_index(table_path: Path, negative: str, positive: str, class_map: dict | None) -> pd.DataFrame:
    table = pd.read_csv(table_path, dtype=str).dropna(subset=["path", "label"])
    if table.empty:
        raise ValueError(f"{table_path}: no rows with a path and a label")
    y_of = external.match_classes(sorted(table["label"].unique()), negative, positive, class_map)
    index = pd.DataFrame({"path": [str(table_path.parent / p) for p in table["path"]],
                          "relpath": table["path"].to_numpy(), "label": table["label"].to_numpy(),
                          "patient_id": table["patient"].fillna(table["path"]).to_numpy()})
    problems = datasets.unreadable_images(index)
    index = index[~index["relpath"].isin(problems)].reset_index(drop=True)
    index["y"] = index["label"].map(y_of).astype(int)
    index.attrs["problems"] = [problems[relpath] for relpath in sorted(problems)]
    return index


def site_index(sources, negative: str, positive: str, class_map: dict | None = None) -> pd.DataFrame:
    """The labelled slices of one or several folders (one folder per class,
    patient sub-folders: core.inference.external.index_external) or manifest CSVs
    (path, label, patient): path, relpath, label, y, patient_id, source.
    With several, relpath and patient_id start with the source's name.
    Unreadable images are left out and listed in attrs["problems"]."""
    sources = [Path(s).expanduser() for s in ([sources] if isinstance(sources, (str, Path)) else sources)]
    parts, problems = [], []
    for source in sources:
        if not source.exists():
            raise ValueError(f"{source}: not found")
        manifest = _manifest(source)
        part = (_manifest_index(manifest, negative, positive, class_map) if manifest
                else external.index_external(source, negative, positive, class_map))
        name = datasets.source_name(source if source.is_dir() else source.parent)
        if len(sources) > 1:
            part = part.assign(relpath=name + "/" + part["relpath"], patient_id=name + ":" + part["patient_id"])
        parts.append(part.assign(source=name)[["path", "relpath", "label", "y", "patient_id", "source"]])
        problems += part.attrs["problems"]
    index = pd.concat(parts, ignore_index=True)
    mixed = index.groupby("patient_id")["y"].nunique()
    if (mixed > 1).any():
        raise ValueError(f"patient {mixed[mixed > 1].index[0]!r} has slices of both classes")
    index.attrs["problems"] = problems
    return index
