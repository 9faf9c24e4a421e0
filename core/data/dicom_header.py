"""What a DICOM series' headers say, as plain values: text, numbers, the
slice orientation and positions, and the summary shown beside a scan's
answer (study date, description, kernel, thickness, spacing, scanner).

Patient identifiers (name, ID, birth date, accession number, UIDs) stay out
of the summary unless asked for: the answer is often shown on a screen or
pasted into a report where they do not belong.
"""
from __future__ import annotations

import io
import json
import re

import numpy as np
import pydicom

from core.data import dicom_frames

IDENTIFIERS = {"patient_name": "PatientName", "patient_id": "PatientID", "patient_birth_date": "PatientBirthDate",
               "accession_number": "AccessionNumber", "study_uid": "StudyInstanceUID",
               "series_uid": "SeriesInstanceUID"}


def text(value) -> str:
    """A header value as one string: several values joined by "/", none as ""."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "/".join(str(v).strip() for v in value)
    return str(value).strip()


def number(value, kind=int):
    """`value` as `kind`, None when absent or not a number."""
    try:
        return kind(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def quoted(value: str) -> str:
    """`value` in double quotes, JSON-escaped, any character that is not
    printable escaped too: text from a file always stays on one line."""
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in json.dumps(value, ensure_ascii=False))


def slice_normal(orientation) -> np.ndarray | None:
    """The normal of the slice plane from ImageOrientationPatient (row and column directions)."""
    try:
        row, column = np.reshape(np.asarray(orientation, float), (2, 3))
    except (TypeError, ValueError):
        return None
    normal = np.cross(row, column)
    return normal if np.all(np.isfinite(normal)) and np.linalg.norm(normal) > 0.5 else None


def orientation_name(orientation) -> str:
    """axial, coronal, sagittal, oblique (no axis within about 37 degrees) or unknown."""
    normal = slice_normal(orientation)
    if normal is None:
        return "unknown"
    axis = int(np.argmax(np.abs(normal)))
    return ("sagittal", "coronal", "axial")[axis] if abs(normal[axis]) >= 0.8 else "oblique"


def positions_along(orientation, headers: list[pydicom.Dataset]) -> list[float]:
    """Sorted positions (mm along the slice normal) of the slices that give one:
    each file's, or each frame's of a multi-frame file."""
    normal = slice_normal(orientation)
    if normal is None:
        return []
    slices = [frame for header in headers
              for frame in (dicom_frames.frame_headers(header) if dicom_frames.frame_count(header) > 1 else [header])]
    along = []
    for header in slices:
        try:
            along.append(float(np.dot(np.asarray(header.ImagePositionPatient, float), normal)))
        except (AttributeError, TypeError, ValueError):
            continue
    return sorted(along)


def header_summary(series, with_identifiers: bool = False) -> dict:
    """What the headers say about a study's series (core.data.dicom_study.Series),
    to show beside the answer; patient identifiers only `with_identifiers`."""
    header = series.header
    try:
        pixel_spacing = [float(v) for v in dicom_frames.functional_value(header, "PixelSpacing")]
    except (TypeError, ValueError):
        pixel_spacing = None
    steps = np.diff(series.positions)
    steps = steps[steps > 1e-3]  # two files at one position (a duplicate) are no spacing
    summary = {
        "study_date": study_date(header.get("StudyDate")),
        "study_description": text(header.get("StudyDescription")),
        "series": series.index,
        "series_description": series.description,
        "modality": series.modality,
        "kernel": series.kernel,
        "slice_thickness_mm": series.thickness,
        "slice_spacing_mm": round(float(np.median(steps)), 3) if len(steps) else None,
        "pixel_spacing_mm": pixel_spacing,
        "images": series.images,
        "image_size": f"{series.files[0].columns}x{series.files[0].rows}",
        "manufacturer": text(header.get("Manufacturer")),
        "model": text(header.get("ManufacturerModelName")),
    }
    if with_identifiers:
        summary.update({key: text(header.get(keyword)) for key, keyword in IDENTIFIERS.items()})
    return summary


def study_date(value) -> str:
    """A DICOM date (YYYYMMDD) as YYYY-MM-DD; anything else as it is."""
    value = text(value)
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if re.fullmatch(r"\d{8}", value) else value


def series_label(series) -> str:
    """One line about a series: description, kernel, thickness, orientation, images."""
    thickness = "?" if series.thickness is None else f"{series.thickness:g}"
    return (f"{quoted(series.description)}, kernel {quoted(series.kernel)}, "
            f"{thickness} mm, {series.orientation}, {series.images} images")


def dicomdir_notes(file_name: str, content: bytes, found: dict[str, int]) -> list[str]:
    """What a DICOMDIR index says that the files found do not: series it lists
    with no file here, or with fewer images than it indexes. A DICOMDIR that
    cannot be read is said so; the listing never depends on it."""
    try:
        index = pydicom.dcmread(io.BytesIO(content), force=True)
        records = list(index.DirectoryRecordSequence)
    except Exception as error:  # a damaged index: pydicom raises many kinds
        return [f"{file_name}: not a readable DICOMDIR ({type(error).__name__}); series listed from the files"]
    indexed: dict[str, int] = {}
    current = None
    for record in records:  # in file order: a SERIES record, then its IMAGE records
        kind = str(record.get("DirectoryRecordType", "")).upper()
        if kind == "SERIES":
            current = str(record.get("SeriesInstanceUID", ""))
            indexed.setdefault(current, 0)
        elif kind == "IMAGE" and current is not None:
            indexed[current] += 1
    missing = [uid for uid in indexed if uid not in found]
    short = [uid for uid in indexed if uid in found and found[uid] < indexed[uid]]
    notes = [f"{file_name} indexes {len(indexed)} series; {len(missing)} of them have no file here"] if missing else []
    notes += [f"{file_name}: series …{uid[-12:]} has {found[uid]} of the {indexed[uid]} images it indexes"
              for uid in short]
    return notes
