"""Reading a whole scan: the slices of one patient's CT, in body-axis order.

A scan comes as (a) several DICOM files of one series, (b) a .zip of such
files or of slice images, (c) a NIfTI volume (.nii, .nii.gz) or (d) a folder
of slice images. Every slice is shown through the lung window that single
DICOM slices get (core.data.LUNG_WINDOW), from Hounsfield units: DICOM's
RescaleSlope/Intercept, or a NIfTI volume's values (scl_slope/inter applied
by nibabel).

Every limit is checked from headers and zip directories before any pixel is
decoded or any member inflated, so a huge or hostile upload is refused with
one line naming the file ("ImageReadError"), never an out-of-memory crash.
Nothing in a file is executed: DICOM and NIfTI are parsed as data, zip
members are read in memory and never extracted.
"""
from __future__ import annotations

import gzip
import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pydicom

from core import data
from core.data import ImageReadError

# A thin-slice chest CT (0.625 mm over 40 cm) has about 650 slices; more is a whole-body scan or a mistake.
MAX_SLICES = 1000
MAX_VOXELS = 512 * 512 * MAX_SLICES  # 262 M voxels: 262 MB as 8-bit grey, the most a scan may hold decoded
MAX_SCAN_BYTES = 1024 * 2**20  # 1 GB of files (uncompressed zip members included): 512x512x1000 at 16 bits is 0.5 GB
NIFTI_SUFFIXES = (".nii", ".nii.gz")
GAP_FACTOR = 1.5  # a step between neighbouring slices over 1.5x the usual spacing means slices are missing
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
    """A scan from a folder of slices, a .zip, a NIfTI file or one DICOM/image file."""
    path = Path(path)
    name = name or path.name
    if path.is_dir():
        files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: natural_key(str(p)))
        files = [p for p in files if not IGNORED_MEMBERS.search(p.relative_to(path).as_posix())]
        _check_total([p.stat().st_size for p in files], name)
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
        return read_nifti(_content(*files[0]), files[0][0])
    if len(files) == 1 and _is_zip(files[0][1]):
        return read_zip(_content(*files[0]), files[0][0])
    _check_total([len(source) if isinstance(source, (bytes, bytearray)) else Path(source).stat().st_size
                  for _, source in files], name)
    opened = [data.open_image(source, file_name) for file_name, source in files]
    return _from_opened(opened, name)


def _content(file_name: str, source) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if Path(source).stat().st_size > MAX_SCAN_BYTES:
        raise ImageReadError(f"{file_name}: file too large (over {MAX_SCAN_BYTES // 2**20} MB)")
    return Path(source).read_bytes()


def _is_zip(source) -> bool:
    if isinstance(source, (bytes, bytearray)):
        head = bytes(source[:4])
    else:
        with Path(source).open("rb") as stream:
            head = stream.read(4)
    return head in (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first local header, or an empty zip


def _check_total(sizes: list[int], name: str) -> None:
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
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
        members = [m for m in archive.infolist() if not m.is_dir() and not IGNORED_MEMBERS.search(m.filename)]
    except (zipfile.BadZipFile, ValueError, OSError) as error:
        raise ImageReadError(f"{name}: not a readable zip file ({error})") from error
    for member in members:
        parts = member.filename.replace("\\", "/").split("/")
        if member.filename.startswith(("/", "\\")) or ".." in parts or re.match(r"[A-Za-z]:", member.filename):
            raise ImageReadError(f"{name}: member {member.filename!r} points outside the archive; refused")
    if not members:
        raise ImageReadError(f"{name}: the zip holds no files")
    _check_total([m.file_size for m in members], name)
    if len(members) == 1 and members[0].filename.lower().endswith(NIFTI_SUFFIXES):
        return read_nifti(_member(archive, members[0], name), f"{name}/{members[0].filename}")
    members.sort(key=lambda m: natural_key(m.filename))
    opened = []
    for member in members:
        opened.append(data.open_image(_member(archive, member, name), f"{name}/{member.filename}"))
    return _from_opened(opened, name)


def _member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, name: str) -> bytes:
    try:
        with archive.open(member) as stream:
            return stream.read(member.file_size)  # at most the size checked: a lying directory gains nothing
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, EOFError) as error:
        # RuntimeError: encrypted; NotImplementedError: a compression method zipfile lacks.
        raise ImageReadError(f"{name}/{member.filename}: unreadable zip member ({error})") from error


# ---------------------------------------------------------------------------
# Slices given one file each
# ---------------------------------------------------------------------------

def _from_opened(opened: list[tuple[object, str]], name: str) -> Scan:
    """A scan from files opened (headers checked) by core.data.open_image:
    all DICOM (one series), or all other images."""
    is_dicom = [isinstance(item, pydicom.Dataset) for item, _ in opened]
    if all(is_dicom):
        return _dicom_series(opened, name)
    if any(is_dicom):
        dicom = [file_name for (_, file_name), flag in zip(opened, is_dicom) if flag]
        other = [file_name for (_, file_name), flag in zip(opened, is_dicom) if not flag]
        raise ImageReadError(f"{name}: DICOM files ({_few(dicom)}) mixed with other images ({_few(other)}); "
                             "give one series")
    _check_voxels([(image.size[1], image.size[0]) for image, _ in opened], name)
    slices = [data.decode_image(image, file_name) for image, file_name in opened]
    return Scan(name, slices, [file_name for _, file_name in opened], "slice images",
                notes=["slice images carry no position: ordered by file name"] if len(opened) > 1 else [])


def _few(names: list[str], shown: int = 3) -> str:
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
        listed = "; ".join(f"series …{uid[-12:]}: {_few(files)}" for uid, files in series.items())
        raise ImageReadError(f"{name}: files of {len(series)} different series ({listed}); give one series")
    for dataset, file_name in opened:
        if int(dataset.get("NumberOfFrames") or 1) > 1:
            raise ImageReadError(f"{file_name}: a multi-frame DICOM file inside a series; give single-slice files")
    _check_voxels([(int(d.Rows), int(d.Columns)) for d, _ in opened], name)
    order, positions, notes = _slice_order([d for d, _ in opened], [f for _, f in opened])
    slices = [_dicom_grey(*opened[i]) for i in order]
    return Scan(name, slices, [opened[i][1] for i in order], "DICOM series", positions, notes)


def _dicom_grey(dataset: pydicom.Dataset, file_name: str) -> np.ndarray:
    return data.decode_image(dataset, file_name)[:, :, 0]  # grey in all three channels: keep one


def _slice_order(datasets: list[pydicom.Dataset], names: list[str]):
    """(order, positions in mm or None, notes): by ImagePositionPatient along
    the slice normal (ImageOrientationPatient's row x column), else by
    InstanceNumber, else by file name."""
    try:
        normal = np.cross(*np.reshape(np.asarray(datasets[0].ImageOrientationPatient, float), (2, 3)))
        along = np.array([float(np.dot(np.asarray(d.ImagePositionPatient, float), normal)) for d in datasets])
        if abs(normal[2]) < 0.5:  # a sagittal or coronal series: its slices are not along the body axis
            order, positions, notes = _by_position(along, names)
            return order, positions, notes + ["slices are not axial (a sagittal or coronal series)"]
        return _by_position(along * np.sign(normal[2]), names)  # feet to head
    except (AttributeError, TypeError, ValueError, KeyError):
        pass  # no usable position: fall back on the instance numbers
    try:
        numbers = np.array([int(d.InstanceNumber) for d in datasets])
    except (AttributeError, TypeError, ValueError):
        return list(range(len(datasets))), None, ["no slice position or instance number: slices in file-name order"]
    order = [int(i) for i in np.argsort(numbers, kind="stable")]
    steps = np.diff(numbers[order])
    notes = ["no slice position: slices ordered by InstanceNumber"]
    missing = int(np.sum(np.clip(steps - 1, 0, None))) if len(steps) else 0
    if missing:
        notes.append(f"{missing} instance numbers missing between slices: some slices are not here")
    return order, None, notes


def _by_position(along: np.ndarray, names: list[str]):
    if not np.all(np.isfinite(along)):
        raise ValueError("non-finite slice position")
    order = [int(i) for i in np.argsort(along, kind="stable")]
    positions = [float(along[i]) for i in order]
    return order, positions, gap_notes(positions, [names[i] for i in order])


def gap_notes(positions: list[float], names: list[str]) -> list[str]:
    """Notes on missing slices (a step over GAP_FACTOR x the usual spacing) and on slices at one position."""
    steps = np.diff(positions)
    if len(steps) == 0:
        return []
    notes = []
    repeated = int(np.sum(steps < 1e-3))
    if repeated:
        notes.append(f"{repeated} slices share a position with another")
    spacing = float(np.median(steps[steps >= 1e-3])) if np.any(steps >= 1e-3) else 0.0
    for i in np.flatnonzero(steps > GAP_FACTOR * spacing) if spacing else []:
        notes.append(f"missing slices: a gap of {steps[i]:.1f} mm (about {round(steps[i] / spacing) - 1} "
                     f"slices at {spacing:.1f} mm) between {names[i]} and {names[i + 1]}")
    return notes


# ---------------------------------------------------------------------------
# NIfTI
# ---------------------------------------------------------------------------

def read_nifti(content: bytes, name: str) -> Scan:
    """An axial scan from a NIfTI-1 or -2 volume (gzipped or not): reoriented
    with its affine so that slices run feet to head and each slice shows the
    patient as an axial DICOM does (anterior up, the patient's right on the
    left), pixels made square, values (HU) through the lung window."""
    image = _nifti_image(content, name)
    shape, zooms = image.shape, image.header.get_zooms()[:3]
    orientation = nib.orientations.io_orientation(image.affine)
    if np.isnan(orientation).any():
        raise ImageReadError(f"{name}: NIfTI affine has no usable orientation")
    slice_axis = int(np.flatnonzero(orientation[:, 0] == 2)[0])  # the array axis that runs along S
    flip = orientation[slice_axis, 1] < 0
    in_plane = [axis for axis in range(3) if axis != slice_axis]
    slices, air_seen = [], False
    try:
        for k in range(shape[slice_axis]):
            index = shape[slice_axis] - 1 - k if flip else k
            hounsfield = _nifti_slice(image, slice_axis, index, in_plane, orientation)
            air_seen = air_seen or float(hounsfield.min()) < -500
            slices.append(_square_pixels(data.lung_window(hounsfield),
                                         *_display_zooms(zooms, in_plane, orientation)))
    except Exception as error:  # e.g. a voxel type that is not a number (RGB volumes)
        raise ImageReadError(f"{name}: NIfTI voxels unreadable ({error})") from error
    notes = [] if air_seen else ["the volume's values do not look like Hounsfield units (no air below -500)"]
    if slice_axis != 2:
        notes.append(f"reoriented to axial (the volume's slices were along array axis {slice_axis})")
    spacing = float(zooms[slice_axis])
    return Scan(name, slices, [f"slice {k + 1}" for k in range(len(slices))], "NIfTI volume",
                [k * spacing for k in range(len(slices))], notes)


def _nifti_image(content: bytes, name: str):
    """The nibabel image, its header checked against the limits before the voxels are read."""
    stream = gzip.GzipFile(fileobj=io.BytesIO(content)) if content[:2] == b"\x1f\x8b" else io.BytesIO(content)
    try:
        head = stream.read(540)
        kind = _nifti_kind(head)
        if kind is None:
            raise ImageReadError(f"{name}: not a NIfTI volume (no NIfTI-1 or -2 header)")
        header = kind.header_class.from_fileobj(io.BytesIO(head))
        shape = tuple(int(n) for n in header.get_data_shape())
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3 or min(shape) < 1:
            raise ImageReadError(f"{name}: NIfTI volume of shape {shape}: a scan is one 3-D volume")
        _check_nifti_size(shape, name)
        needed = int(header.get_data_offset()) + int(np.prod(shape)) * header.get_data_dtype().itemsize
        content = head + stream.read(needed - len(head))  # never more than the header says: no gzip bomb
        if len(content) < needed:
            raise ImageReadError(f"{name}: NIfTI file truncated ({len(content)} of {needed} bytes)")
        return kind.from_bytes(content)
    except ImageReadError:
        raise
    except Exception as error:  # nibabel, gzip and numpy raise many kinds on damaged files
        raise ImageReadError(f"{name}: not a readable NIfTI volume ({error})") from error


def _nifti_kind(head: bytes):
    for order in "<>":
        size = int(np.frombuffer(head[:4], dtype=f"{order}i4")[0]) if len(head) >= 4 else 0
        if size == 348:
            return nib.Nifti1Image
        if size == 540:
            return nib.Nifti2Image
    return None


def _check_nifti_size(shape: tuple[int, int, int], name: str) -> None:
    if max(shape) > MAX_SLICES:
        raise ImageReadError(f"{name}: NIfTI volume {' x '.join(map(str, shape))} has {max(shape)} slices along "
                             f"an axis, more than the {MAX_SLICES} a scan may have")
    if int(np.prod(shape)) > MAX_VOXELS:
        raise ImageReadError(f"{name}: NIfTI volume {' x '.join(map(str, shape))} = {np.prod(shape) / 1e6:.0f} M "
                             f"voxels, more than the {MAX_VOXELS / 1e6:.0f} M a scan may have")


def _nifti_slice(image, slice_axis: int, index: int, in_plane: list[int], orientation) -> np.ndarray:
    """One slice in HU (scaling applied by nibabel), as display rows (anterior
    to posterior) x columns (patient's right to left)."""
    picker = [slice(None)] * 3
    picker[slice_axis] = index
    plane = np.asarray(image.dataobj[tuple(picker)], dtype=np.float64)
    if plane.ndim == 3:  # a trailing axis of length 1 (shape x, y, z, 1)
        plane = plane[..., 0]
    for position, axis in enumerate(in_plane):  # make each in-plane axis run towards R (0) or A (1)
        if orientation[axis, 1] < 0:
            plane = np.flip(plane, axis=position)
    if orientation[in_plane[0], 0] == 1:  # the first array axis runs along A: put R first
        plane = plane.T
    return plane.T[::-1, ::-1]  # (R, A) -> rows A to P, columns R to L: as an axial DICOM shows it


def _display_zooms(zooms, in_plane: list[int], orientation) -> tuple[float, float]:
    """(row, column) pixel size in mm of the displayed slice."""
    along = {int(orientation[axis, 0]): float(zooms[axis]) for axis in in_plane}
    return along[1], along[0]  # rows run along A, columns along R


def _square_pixels(grey: np.ndarray, row_mm: float, column_mm: float) -> np.ndarray:
    """Resample so a pixel is as tall as it is wide (a coronal volume read as axial has thick rows)."""
    if row_mm <= 0 or column_mm <= 0 or abs(row_mm / column_mm - 1) < 0.01:
        return grey
    rows, columns = grey.shape
    scale = row_mm / column_mm
    size = (columns, round(rows * scale)) if scale > 1 else (round(columns / scale), rows)
    return cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR)
