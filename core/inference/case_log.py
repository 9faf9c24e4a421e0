"""The case log: a record of every prediction made in the app or by the CLI
(predict, predict-scan), one JSON file per case under paths.cases_dir().

A record holds what was asked and what was answered: the sha256 of the
input's bytes (its decoded pixels too only when the user asks to keep images:
paths.keep_case_images), its file name, the time, the model run, the site
profile, the probability, threshold, decision, borderline flag, and whether
the guard refused it. A clinician can later store the correct label (and a
patient id) in it; core.inference.case_export turns those cases into a
site's labelled set.

One file per case, named by time, digest and a random part, so concurrent
app sessions and CLI runs never write the same file; each write is atomic
(core.base.files). A label is added under a lock, so two corrections of one
case do not lose each other's fields. Reads are bounded and validated: a
file this tool did not write (a link, a huge file, malformed JSON, fields of
the wrong kind) is listed as a problem, never trusted.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from core.base import files, paths
from core.data.images import IMAGE_EXTENSIONS

IMAGES = "images"  # cases/images/<case>/: the inputs kept when asked
MAX_CASE_BYTES = 64 * 2**10  # a record is well under 2 kB; more is not one this tool wrote
MAX_PATIENT_LENGTH = 64
CASE_FILE = re.compile(r"^(\d{8}T\d{12}Z-[0-9a-f]{12}-[0-9a-f]{6})\.json$")
UNSET = object()

# The fields of a record and the JSON types each may hold (None: absent or null allowed).
SCHEMA = {
    "case": (str,), "kind": (str,), "source": (str,), "file": (str,), "sha256": (str,), "time": (str,),
    "run": (str,), "recipe": (str, type(None)), "site": (str, type(None)), "calibration": (str,),
    "probability": (float, int, type(None)), "threshold": (float, int), "decision": (str,),
    "positive_class": (str,), "negative_class": (str,), "borderline": (bool,), "refused": (bool,),
    "reasons": (list,), "images": (list,), "slices": (int,),
    "label": (str, type(None)), "patient": (str, type(None)), "labelled_at": (str, type(None)),
}
TABLE_COLUMNS = ["time", "kind", "file", "run", "site", "probability", "threshold", "decision", "borderline",
                 "refused", "label", "patient", "image_kept", "sha256", "case", "source"]


def input_digest(inputs: list[tuple[str, bytes]]) -> str:
    """sha256 of one input's bytes; of several (a scan's files), of their names and digests in order."""
    if len(inputs) == 1:
        return hashlib.sha256(inputs[0][1]).hexdigest()
    digest = hashlib.sha256()
    for name, content in inputs:
        digest.update(name.encode("utf-8", "surrogateescape") + b"\0" + hashlib.sha256(content).digest())
    return digest.hexdigest()


def calibration_words(site: str | None) -> str:
    """Which calibration a probability comes from, as the app and the report say it."""
    return f"calibrated for site {site}" if site else "the model's own calibration"


def slice_values(prediction, run_dir) -> dict:
    """A slice's Prediction (core.inference.predict) as the values a record keeps."""
    return {"kind": "slice", "run": Path(run_dir).name, "site": prediction.site,
            "calibration": calibration_words(prediction.site), "probability": float(prediction.probability),
            "threshold": float(prediction.threshold), "decision": prediction.label,
            "positive_class": prediction.positive_class, "negative_class": prediction.negative_class,
            "borderline": bool(prediction.borderline), "refused": bool(prediction.refused),
            "reasons": list(prediction.ood_problems), "slices": 1}


def scan_values(result, run_dir) -> dict:
    """A scored scan (core.inference.scan_decision.ScanResult) as the values a record keeps."""
    site = result.settings.get("site")
    probability = result.scan_probability
    return {"kind": "scan", "run": Path(run_dir).name, "site": site, "calibration": calibration_words(site),
            "probability": None if probability is None else float(probability),
            "threshold": float(result.settings["threshold"]), "decision": result.decision,
            "positive_class": result.positive_class, "negative_class": result.negative_class,
            "borderline": bool(result.borderline), "refused": probability is None,
            "reasons": list(result.notes), "slices": len(result.scan.slices)}


def log_case(values: dict, inputs: list[tuple[str, bytes]], file_name: str, source: str,
             recipe: str | None = None, kept: list[tuple[str, bytes]] | None = None, folder=None) -> dict:
    """Write one case's record (values: slice_values or scan_values) and return it.
    `kept`: the images to keep beside it (name, bytes), only when the user asked."""
    folder = Path(folder or paths.cases_dir())
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    digest = input_digest(inputs)
    case = f"{now:%Y%m%dT%H%M%S%f}Z-{digest[:12]}-{secrets.token_hex(3)}"
    images = _keep(folder / IMAGES / case, kept) if kept else []
    record = {**values, "case": case, "source": source, "file": files.as_text(str(file_name)), "sha256": digest,
              "time": now.isoformat(timespec="seconds"), "recipe": recipe, "images": images,
              "label": None, "patient": None, "labelled_at": None}
    validate(record, case)
    files.write_json(folder / f"{case}.json", record)
    return record


def _keep(folder: Path, kept: list[tuple[str, bytes]]) -> list[str]:
    """Write the inputs kept, named by their order (never by the upload's name), with an image suffix."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for number, (name, content) in enumerate(kept):
        suffix = Path(name).suffix.lower()
        kept_name = f"{number:04d}{suffix if suffix in IMAGE_EXTENSIONS else '.png'}"
        files.write_bytes(folder / kept_name, content)
        names.append(kept_name)
    return names


def validate(record, name: str) -> dict:
    """`record` when it is a case record this tool writes; ValueError naming the file and field otherwise."""
    if not isinstance(record, dict):  # a bad file, as every other problem: ValueError, which callers list
        raise ValueError(f"{name}: not a case record (a JSON object)")  # noqa: TRY004
    for field, kinds in SCHEMA.items():
        value = record.get(field)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ValueError(f"{name}: field {field!r} is missing or not a {kinds[0].__name__}")
    if record["kind"] not in ("slice", "scan"):
        raise ValueError(f"{name}: kind {record['kind']!r} is not slice or scan")
    if not re.fullmatch(r"[0-9a-f]{64}", record["sha256"]):
        raise ValueError(f"{name}: sha256 is not a digest")
    for kept in record["images"]:
        if not isinstance(kept, str) or not re.fullmatch(r"\d{4}\.[a-z]{2,5}", kept):
            raise ValueError(f"{name}: a kept image name {kept!r} this tool does not write")
    return record


def read_case(path) -> dict:
    """One record, read within its bound and validated; ValueError naming the file and why not."""
    path = Path(path)
    match = CASE_FILE.match(path.name)
    if not match:
        raise ValueError(f"{path.name}: not a case file name")
    if path.is_symlink():
        raise ValueError(f"{path.name}: a link, not a record this tool wrote")
    try:
        record = files.parse_json(files.read_regular(path, MAX_CASE_BYTES, inside=path.parent))
    except files.Refused as error:
        raise ValueError(f"{path.name}: {error}") from None
    except ValueError as error:
        raise ValueError(f"{path.name}: {error}") from None
    validate(record, path.name)
    if record["case"] != match.group(1):
        raise ValueError(f"{path.name}: its record names another case ({record['case']!r})")
    return record


def list_cases(folder=None, limit: int | None = None) -> tuple[list[dict], list[str]]:
    """(records newest first, problems): at most `limit` case files are read, the
    newest; each file that is not a valid record is a problem naming it."""
    folder = Path(folder or paths.cases_dir())
    if not folder.is_dir():
        return [], []
    with os.scandir(folder) as entries:
        names = sorted((entry.name for entry in entries if entry.name.endswith(".json")), reverse=True)
    records, problems = [], []
    for name in names[:limit]:
        try:
            records.append(read_case(folder / name))
        except (ValueError, OSError) as error:
            problems.append(str(error))
    return records, problems


def find_case(case: str, folder=None) -> Path:
    folder = Path(folder or paths.cases_dir())
    path = folder / f"{case}.json"
    if not CASE_FILE.match(path.name) or not path.exists():
        raise ValueError(f"case {case!r} not found in {folder}")
    return path


def check_patient(patient: str | None) -> str | None:
    """A patient id as it may be stored and become a folder name, or None for none given."""
    if patient is None or not str(patient).strip():
        return None
    return files.check_name(str(patient).strip(), "patient id", MAX_PATIENT_LENGTH)


@contextlib.contextmanager
def _locked(folder: Path):
    """One labelling at a time in the case log (an advisory lock on a file beside the records)."""
    with open(folder / ".label.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def set_label(case: str, label: str, patient=UNSET, folder=None) -> dict:
    """Store the correct label of a case (one of its two classes) and, when given, its patient id."""
    path = find_case(case, folder)
    with _locked(path.parent):
        record = read_case(path)
        if label not in (record["negative_class"], record["positive_class"]):
            raise ValueError(f"label {label!r} is neither {record['negative_class']!r} nor "
                             f"{record['positive_class']!r}")
        record["label"] = label
        if patient is not UNSET:
            record["patient"] = check_patient(patient)
        record["labelled_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        files.write_json(path, record)
    return record


def kept_images(record: dict, folder=None) -> list[Path]:
    """The files kept with a case (none unless the user asked to keep images)."""
    folder = Path(folder or paths.cases_dir()) / IMAGES / record["case"]
    return [folder / name for name in record["images"]]


def case_table(records: list[dict]) -> pd.DataFrame:
    """Records as a table (one row per case, in the order given): the CSV of many predictions."""
    rows = [{**{column: record.get(column) for column in TABLE_COLUMNS}, "image_kept": bool(record["images"])}
            for record in records]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def png(image) -> bytes:
    """A decoded slice (uint8 RGB) as PNG bytes: how a scan's slices are kept."""
    import cv2

    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("a slice could not be encoded as PNG")
    return encoded.tobytes()


def slice_image(prediction) -> list[tuple[str, bytes]]:
    """A slice to keep: its decoded pixels as PNG, never the file as uploaded, whose
    DICOM header can hold a patient's name and ids."""
    return [("slice.png", png(prediction.image))]


def scan_images(result) -> list[tuple[str, bytes]]:
    """The slices a scan's decision counted (scored, passed by the guard), as PNGs to keep."""
    return [(f"{index:04d}.png", png(result.scan.rgb(index))) for index in result.counted]
