"""The case log's labelled cases as a site's labelled set (issue 27 item 5):
the folder layout core.inference.site_labels reads, so that labels stored
with "This answer is wrong" (or confirmed) feed `python -m core site-profile`,
`site-check` and `adapt` (docs/site-adaptation.md).

    DIR/<class>/<patient>/<case>-<n>.<ext>   one sub-folder per class, then per patient
    DIR/manifest.csv                         path, label, patient, case, sha256, file

Only cases with a label and kept images go in: without its image a case
cannot be shown to a model again. A case without a patient id is its own
patient ("case-<id>"), so its slices never pool with another's.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.base import files, paths
from core.data.limits import MAX_FILE_BYTES
from core.inference import case_log

MANIFEST_COLUMNS = ["path", "label", "patient", "case", "sha256", "file"]


def patient_of(record: dict) -> str:
    return record["patient"] or f"case-{record['case']}"


def exportable(records: list[dict]) -> tuple[list[dict], list[str]]:
    """(the cases that go in, why each other labelled case does not): a label and
    kept images needed, and no patient with cases of both classes."""
    chosen, skipped = [], []
    for record in records:
        if record["label"] is None:
            continue
        if not record["images"]:
            skipped.append(f"case {record['case']}: labelled, but its image was not kept")
            continue
        chosen.append(record)
    labels_of = {}
    for record in chosen:
        labels_of.setdefault(patient_of(record), set()).add(record["label"])
    mixed = {patient for patient, labels in labels_of.items() if len(labels) > 1}
    skipped += [f"patient {patient}: cases of both classes, left out" for patient in sorted(mixed)]
    return [record for record in chosen if patient_of(record) not in mixed], skipped


def export_cases(out_dir, folder=None, report=print) -> pd.DataFrame:
    """Write the labelled cases with kept images to `out_dir` (new or empty) and
    return its manifest; ValueError when there is nothing to export."""
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir}: not an empty folder (the export never mixes with other files)")
    folder = Path(folder or paths.cases_dir())
    records, problems = case_log.list_cases(folder)
    for problem in problems:
        report(f"skipped: {problem}")
    chosen, skipped = exportable(records)
    for line in skipped:
        report(f"skipped: {line}")
    if not chosen:
        raise ValueError(f"{folder}: no case has both a label and a kept image (keep images when predicting, "
                         "then mark answers right or wrong)")
    rows = []
    for record in chosen:
        label = files.check_name(record["label"], "class name")
        patient = patient_of(record)
        for kept in case_log.kept_images(record, folder):
            content = files.read_regular(kept, MAX_FILE_BYTES, inside=folder / case_log.IMAGES)
            relpath = f"{label}/{patient}/{record['case']}-{kept.name}"
            (out_dir / label / patient).mkdir(parents=True, exist_ok=True)
            files.write_bytes(out_dir / relpath, content)
            rows.append({"path": relpath, "label": label, "patient": patient, "case": record["case"],
                         "sha256": record["sha256"], "file": record["file"]})
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    files.write_csv(out_dir / "manifest.csv", manifest)
    report(f"exported {len(chosen)} case(s), {len(rows)} image(s), "
           f"{manifest['patient'].nunique()} patient(s) to {out_dir}")
    return manifest
