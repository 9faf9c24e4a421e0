"""NIfTI volumes (.nii, .nii.gz) as axial CT slices, for core.data.scans.

The volume's values are taken as Hounsfield units, with nibabel applying
scl_slope/scl_inter; the affine (nibabel's io_orientation) says which array
axis runs feet to head and how each slice must be turned to be shown as an
axial DICOM slice. The header is checked against the limits before any voxel
is read, on what will be computed: the slices once their pixels are made
square, and the voxels' bytes once inflated. A gzipped file is never
inflated past what its header announces. Voxel sizes, the affine and the
scaling must be finite numbers, and so must every voxel's value.
"""
from __future__ import annotations

import gzip
import io

import cv2
import nibabel as nib
import numpy as np

from core.data import limits
from core.data import images
from core.data.limits import ImageReadError



def axial_slices(content: bytes, name: str, max_slices: int, max_voxels: int):
    """(slices, spacing in mm, notes) of a NIfTI-1 or -2 volume (gzipped or
    not): reoriented with its affine so that slices run feet to head and each
    slice shows the patient as an axial DICOM does (anterior up, the patient's
    right on the left), pixels made square, values (HU) through the lung
    window, as uint8 grey. Refused (ImageReadError) beyond `max_slices` axial
    slices or `max_voxels`, from the header, before the voxels are read."""
    image = _nifti_image(content, name, max_slices, max_voxels)
    shape, zooms = image.shape, image.header.get_zooms()[:3]
    orientation, slice_axis = _orientation(image.affine, name)
    flip = orientation[slice_axis, 1] < 0
    in_plane = [axis for axis in range(3) if axis != slice_axis]
    slices, air_seen = [], False
    try:
        for k in range(shape[slice_axis]):
            index = shape[slice_axis] - 1 - k if flip else k
            hounsfield = _nifti_slice(image, slice_axis, index, in_plane, orientation)
            limits.check_finite(name, hounsfield, f"NIfTI voxel values of slice {k + 1}")
            air_seen = air_seen or float(hounsfield.min()) < -500
            slices.append(_square_pixels(images.lung_window(hounsfield),
                                         *_display_zooms(zooms, in_plane, orientation)))
    except ImageReadError:
        raise
    except Exception as error:  # e.g. a voxel type that is not a number (RGB volumes)
        raise ImageReadError(f"{name}: NIfTI voxels unreadable ({error})") from error
    notes = [] if air_seen else ["the volume's values do not look like Hounsfield units (no air below -500)"]
    if slice_axis != 2:
        notes.append(f"reoriented to axial (the volume's slices were along array axis {slice_axis})")
    return slices, float(zooms[slice_axis]), notes


def _orientation(affine, name: str):
    """(nibabel's orientation of each array axis in RAS, the array axis that runs along S)."""
    orientation = nib.orientations.io_orientation(affine)
    if np.isnan(orientation).any():
        raise ImageReadError(f"{name}: NIfTI affine has no usable orientation")
    return orientation, int(np.flatnonzero(orientation[:, 0] == 2)[0])


def _nifti_image(content: bytes, name: str, max_slices: int, max_voxels: int):
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
        _check_header(header, name)
        _check_size(shape, header, name, max_slices, max_voxels)
        needed = int(header.get_data_offset()) + int(np.prod(shape)) * header.get_data_dtype().itemsize
        if needed > limits.MAX_SCAN_BYTES:
            raise ImageReadError(f"{name}: NIfTI voxels of {needed / 2**20:.0f} MB, more than the "
                                 f"{limits.MAX_SCAN_BYTES // 2**20} MB a scan may have")
        if isinstance(stream, gzip.GzipFile):  # inflated once, never past what the header says: no gzip bomb
            stream.seek(0)
            content = stream.read(needed)
        if len(content) < needed:  # (an uncompressed file is used as it is: no copy of its voxels)
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


def _check_header(header, name: str) -> None:
    """Voxel sizes positive and finite; the affine and the scaling finite."""
    zooms = [float(z) for z in header.get_zooms()[:3]]
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise ImageReadError(f"{name}: NIfTI voxel size {zooms} mm: each must be a positive finite number")
    if not np.isfinite(header.get_best_affine()).all():
        raise ImageReadError(f"{name}: NIfTI affine holds NaN or infinity")
    if not all(value is None or np.isfinite(value) for value in header.get_slope_inter()):
        raise ImageReadError(f"{name}: NIfTI scaling (scl_slope, scl_inter) holds NaN or infinity")


def _check_size(shape: tuple[int, int, int], header, name: str, max_slices: int, max_voxels: int) -> None:
    """The limits, on the slices as they will be computed: along the axis
    that runs feet to head, with their pixels made square."""
    orientation, slice_axis = _orientation(header.get_best_affine(), name)
    slices, side = shape[slice_axis], min(n for axis, n in enumerate(shape) if axis != slice_axis)
    if side < limits.MIN_IMAGE_SIDE:
        raise ImageReadError(f"{name}: NIfTI volume {' x '.join(map(str, shape))}: its axial slices are under "
                             f"{limits.MIN_IMAGE_SIDE} px a side, too small for a CT slice")
    if slices > max_slices:
        raise ImageReadError(f"{name}: NIfTI volume {' x '.join(map(str, shape))} has {slices} axial slices, "
                             f"more than the {max_slices} a scan may have")
    if int(np.prod(shape)) > max_voxels:
        raise ImageReadError(f"{name}: NIfTI volume {' x '.join(map(str, shape))} = {np.prod(shape) / 1e6:.0f} M "
                             f"voxels, more than the {max_voxels / 1e6:.0f} M a scan may have")
    in_plane = [axis for axis in range(3) if axis != slice_axis]
    rows, columns = (shape[axis] for axis in sorted(in_plane, key=lambda axis: -orientation[axis, 0]))
    rows, columns = _square_shape(rows, columns, *_display_zooms(header.get_zooms()[:3], in_plane, orientation))
    pixels = rows * columns
    if pixels > limits.MAX_IMAGE_PIXELS or slices * pixels > max_voxels:
        raise ImageReadError(f"{name}: NIfTI voxels of {' x '.join(f'{z:g}' for z in header.get_zooms()[:3])} mm "
                             f"make {slices} slices of {rows} x {columns} px once square ({slices * pixels / 1e6:.0f} "
                             f"M pixels): more than the {limits.MAX_IMAGE_PIXELS / 1e6:.0f} M a slice, or the "
                             f"{max_voxels / 1e6:.0f} M a scan, may have")


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


def _square_shape(rows: int, columns: int, row_mm: float, column_mm: float) -> tuple[int, int]:
    """(rows, columns) of a slice resampled so a pixel is as tall as it is wide: the finer spacing kept."""
    scale = row_mm / column_mm
    if abs(scale - 1) < 0.01:
        return rows, columns
    return (round(rows * scale), columns) if scale > 1 else (rows, round(columns / scale))


def _square_pixels(grey: np.ndarray, row_mm: float, column_mm: float) -> np.ndarray:
    """Resample so a pixel is as tall as it is wide (a coronal volume read as axial has thick rows)."""
    rows, columns = _square_shape(*grey.shape, row_mm, column_mm)
    if (rows, columns) == grey.shape:
        return grey
    return cv2.resize(grey, (columns, rows), interpolation=cv2.INTER_LINEAR)
