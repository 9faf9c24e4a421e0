"""Reading a whole scan: the slices of one patient's CT, in body-axis order.

A scan comes as (a) several DICOM files of one series, (b) a .zip of such
files or of slice images, (c) a NIfTI volume (.nii, .nii.gz) or (d) a folder
of slice images. Every slice is shown through the lung window that single
DICOM slices get (core.data.dicom.LUNG_WINDOW), from Hounsfield units: DICOM's
RescaleSlope/Intercept, or a NIfTI volume's values (scl_slope/inter applied
by nibabel).

Every limit is checked from headers and zip directories before any pixel is
decoded or any member inflated, so a huge or hostile upload is refused with
one line naming the file ("ImageReadError"), never an out-of-memory crash.
Nothing in a file is executed: DICOM and NIfTI are parsed as data, zip
members are read in memory and never extracted.
"""
from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from core.base.files import Refused, files_under, read_regular
from core.data import dicom_frames, images
from core.data.slice_order import slice_order
from core.data import nifti
from core.data.limits import MAX_SCAN_BYTES, MAX_SLICES, MAX_VOXELS, ImageReadError
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Members a zip of a series may carry besides its slices: folders, macOS metadata, the DICOMDIR index.
IGNORED_MEMBERS = re.compile(r"(^|/)(__MACOSX/|\.[^/]*$|DICOMDIR$)", re.IGNORECASE)


@dataclass
class Scan:
    name: str
    slices: list[np.ndarray]   # uint8: grey H x W (DICOM, NIfTI) or RGB H x W x 3 (images), in body-axis order
    slice_names: list[str]     # the file (or "slice k" of a volume) each slice came from
    kind: str                  # "DICOM series", "NIfTI volume" or "slice images"
    positions: list[float] | None = None  # mm along the body axis (feet to head), None when unknown
    notes: list[str] = field(default_factory=list)  # what the reader noticed: missing slices, the order used

    def rgb(self, i: int) -> np.ndarray:
        """Slice i as the uint8 RGB image the models take."""
        image = self.slices[i]
        return image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------

def read_path(path, name: str | None = None) -> Scan:
    """A scan from a folder of slices, a .zip, a NIfTI file or one DICOM/image
    file. A folder's files must be regular files, links among them leading
    nowhere out of the folder (core.base.files.files_under)."""
    path = Path(path)
    name = name or path.name
    if path.is_dir():
        listed = [(p, problem) for p, problem in files_under(path)
                  if not IGNORED_MEMBERS.search(p.relative_to(path).as_posix())]
        for p, problem in listed:
            if problem:
                raise ImageReadError(f"{name}/{p.relative_to(path).as_posix()}: {problem}")
        files = sorted((p for p, _ in listed), key=lambda p: natural_key(str(p)))
        check_total([p.stat().st_size for p in files], name)
        return read_files([(p.relative_to(path).as_posix(), p) for p in files], name)
    if not path.exists():
        raise ImageReadError(f"{name}: no such file or folder")
    return read_files([(path.name, path)], name)


def read_files(files: list[tuple[str, object]], name: str) -> Scan:
    """A scan from (file name, path or bytes) pairs, as uploaded: one zip or
    NIfTI file, or the slices themselves (DICOM files of one series, or images)."""
    if not files:
        raise ImageReadError(f"{name}: no files")
    if len(files) == 1 and files[0][0].lower().endswith(NIFTI_SUFFIXES):
        return read_nifti(file_content(*files[0]), files[0][0])
    if len(files) == 1 and is_zip(files[0][1]):
        return read_zip(file_content(*files[0]), files[0][0])
    check_total([len(source) if isinstance(source, (bytes, bytearray)) else Path(source).stat().st_size
                  for _, source in files], name)
    opened = [images.open_image(source, file_name) for file_name, source in files]
    return _from_opened(opened, name)


def group_uploads(files: list[tuple[str, bytes]], one_scan: bool = False):
    """(scans, singles) from uploaded (name, bytes): each zip or NIfTI file is
    a scan; two or more DICOM files make one series; with `one_scan` every
    other file joins them as slices of one scan. What is left are single
    slices, predicted one by one. scans: [(name, [(file name, bytes), ...])]."""
    scans, rest = [], []
    for file_name, content in files:
        if file_name.lower().endswith(NIFTI_SUFFIXES) or is_zip(content):
            scans.append((file_name, [(file_name, content)]))
        else:
            rest.append((file_name, content))
    dicom = [item for item in rest if item[1][128:132] == b"DICM" or item[0].lower().endswith((".dcm", ".dicom"))]
    together = rest if one_scan else dicom if len(dicom) > 1 else []
    if len(together) > (0 if one_scan else 1):
        kind = "DICOM series" if together == dicom else "slices"
        scans.append((f"{kind} of {len(together)} files", together))
    return scans, [item for item in rest if item not in together]


def one_scan_offer(singles: list[tuple[str, bytes]]) -> str | None:
    """Words offering the single slices left by group_uploads as one scan, or
    None when fewer than two are left. Slices uploaded together are most often
    one patient's: answered one by one they give as many answers, which can
    contradict each other, where a scan gets one decision for the patient."""
    if len(singles) < 2:
        return None
    return (f"{len(singles)} slices were uploaded together and are answered one by one. If they are slices "
            "of one patient's scan, read them as one scan: one decision for the patient from all its slices, "
            f"instead of {len(singles)} separate answers that can contradict each other.")


def file_content(file_name: str, source) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    try:
        return read_regular(source, MAX_SCAN_BYTES)
    except OSError as error:
        raise ImageReadError(f"{file_name}: {error if isinstance(error, Refused) else error.strerror}") from None


def is_zip(source) -> bool:
    if isinstance(source, (bytes, bytearray)):
        head = bytes(source[:4])
    else:
        try:
            head = read_regular(source, 4, head=True)
        except OSError:
            return False  # not a zip: the reader that takes it names why it cannot be read
    return head in (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first local header, or an empty zip


def check_total(sizes: list[int], name: str) -> None:
    if len(sizes) > MAX_SLICES:
        raise ImageReadError(f"{name}: {len(sizes)} files, more than the {MAX_SLICES} slices a scan may have")
    if sum(sizes) > MAX_SCAN_BYTES:
        raise ImageReadError(f"{name}: {sum(sizes) / 2**20:.0f} MB of files, more than the "
                             f"{MAX_SCAN_BYTES // 2**20} MB a scan may have")


def natural_key(text: str) -> list:
    """Sort key that puts "slice2" before "slice10"."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


# ---------------------------------------------------------------------------
# Zip
# ---------------------------------------------------------------------------

def read_zip(content: bytes, name: str) -> Scan:
    """The scan in a zip: DICOM files of one series, slice images, or one NIfTI
    volume. Sizes come from the zip's directory and are checked before any
    member is inflated; a member is never read past its declared size."""
    archive = open_zip(content, name)
    members = [m for m in archive.infolist() if not m.is_dir() and not IGNORED_MEMBERS.search(m.filename)]
    if not members:
        raise ImageReadError(f"{name}: the zip holds no files")
    check_total([m.file_size for m in members], name)
    if len(members) == 1 and members[0].filename.lower().endswith(NIFTI_SUFFIXES):
        return read_nifti(member_bytes(archive, members[0], name), f"{name}/{members[0].filename}")
    members.sort(key=lambda m: natural_key(m.filename))
    opened = []
    for member in members:
        opened.append(images.open_image(member_bytes(archive, member, name), f"{name}/{member.filename}"))
    return _from_opened(opened, name)


def open_zip(content: bytes, name: str) -> zipfile.ZipFile:
    """The zip in `content`, refused when a member's name points outside it."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as error:
        raise ImageReadError(f"{name}: not a readable zip file ({error})") from error
    for member in members:
        parts = member.filename.replace("\\", "/").split("/")
        if member.filename.startswith(("/", "\\")) or ".." in parts or re.match(r"[A-Za-z]:", member.filename):
            raise ImageReadError(f"{name}: member {member.filename!r} points outside the archive; refused")
    return archive


def member_bytes(archive: zipfile.ZipFile, member: zipfile.ZipInfo, name: str, size: int | None = None) -> bytes:
    """The member's first `size` bytes, all by default: never more than the
    size the directory declares and was checked, so a lying directory gains nothing."""
    try:
        with archive.open(member) as stream:
            return stream.read(member.file_size if size is None else min(size, member.file_size))
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, EOFError) as error:
        # RuntimeError: encrypted; NotImplementedError: a compression method zipfile lacks.
        raise ImageReadError(f"{name}/{member.filename}: unreadable zip member ({error})") from error


# ---------------------------------------------------------------------------
# Slices given one file each
# ---------------------------------------------------------------------------

def _from_opened(opened: list[tuple[object, str]], name: str) -> Scan:
    """A scan from files opened (headers checked) by core.data.images.open_image:
    all DICOM (one series), or all other images."""
    is_dicom = [isinstance(item, pydicom.Dataset) for item, _ in opened]
    if all(is_dicom):
        return _dicom_series(opened, name)
    if any(is_dicom):
        dicom = [file_name for (_, file_name), flag in zip(opened, is_dicom) if flag]
        other = [file_name for (_, file_name), flag in zip(opened, is_dicom) if not flag]
        raise ImageReadError(f"{name}: DICOM files ({few(dicom)}) mixed with other images ({few(other)}); "
                             "give one series")
    _check_voxels([(image.size[1], image.size[0]) for image, _ in opened], name)
    slices = [images.decode_image(image, file_name) for image, file_name in opened]
    return Scan(name, slices, [file_name for _, file_name in opened], "slice images",
                notes=["slice images carry no position: ordered by file name"] if len(opened) > 1 else [])


def few(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _check_voxels(shapes: list[tuple[int, int]], name: str) -> None:
    voxels = sum(rows * columns for rows, columns in shapes)
    if voxels > MAX_VOXELS:
        raise ImageReadError(f"{name}: {len(shapes)} slices of {voxels / 1e6:.0f} M pixels in all, more than "
                             f"the {MAX_VOXELS / 1e6:.0f} M a scan may have")


def _dicom_series(opened: list[tuple[pydicom.Dataset, str]], name: str) -> Scan:
    series: dict[str, list[str]] = {}
    for dataset, file_name in opened:
        series.setdefault(str(dataset.get("SeriesInstanceUID", "no series UID")), []).append(file_name)
    if len(series) > 1:
        listed = "; ".join(f"series …{uid[-12:]}: {few(files)}" for uid, files in series.items())
        raise ImageReadError(f"{name}: files of {len(series)} different series ({listed}); give one series")
    if len(opened) == 1 and dicom_frames.frame_count(opened[0][0]) > 1:
        return _frames_scan(*opened[0], name)
    for dataset, file_name in opened:
        if int(dataset.get("NumberOfFrames") or 1) > 1:
            raise ImageReadError(f"{file_name}: a multi-frame DICOM file inside a series; give single-slice files")
    _check_voxels([(int(d.Rows), int(d.Columns)) for d, _ in opened], name)
    order, positions, notes = slice_order([d for d, _ in opened], [f for _, f in opened])
    slices = list(images.in_threads(lambda i: _dicom_grey(*opened[i]), order))
    return Scan(name, slices, [opened[i][1] for i in order], "DICOM series", positions, notes)


def _frames_scan(dataset: pydicom.Dataset, file_name: str, name: str) -> Scan:
    """The frames of one multi-frame (enhanced) DICOM file as a scan's slices,
    ordered as a series' files are; the limits checked before any frame is decoded."""
    frames = dicom_frames.frame_count(dataset)
    if frames > MAX_SLICES:
        raise ImageReadError(f"{file_name}: {frames} frames, more than the {MAX_SLICES} slices a scan may have")
    _check_voxels([(int(dataset.Rows), int(dataset.Columns))] * frames, name)
    names = [f"{file_name} frame {k + 1}" for k in range(frames)]
    order, positions, notes = slice_order(dicom_frames.frame_headers(dataset), names)
    notes = [note.replace("InstanceNumber", "frame number") for note in notes]
    slices = list(images.in_threads(lambda k: _dicom_grey(dataset, file_name, k), order))
    return Scan(name, slices, [names[k] for k in order], "DICOM series", positions, notes)


def _dicom_grey(dataset: pydicom.Dataset, file_name: str, frame: int | None = None) -> np.ndarray:
    # Grey in all three channels: keep one, copied so that the RGB array is freed.
    return np.ascontiguousarray(images.decode_image(dataset, file_name, frame=frame)[:, :, 0])


def read_nifti(content: bytes, name: str) -> Scan:
    """An axial scan from a NIfTI volume (core.data.nifti), within this module's limits."""
    slices, spacing, notes = nifti.axial_slices(content, name, MAX_SLICES, MAX_VOXELS)
    return Scan(name, slices, [f"slice {k + 1}" for k in range(len(slices))], "NIfTI volume",
                [k * spacing for k in range(len(slices))], notes)
