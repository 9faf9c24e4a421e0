"""What every reader refuses, and how it says so: limits checked on what
will be computed (a slice's pixels once decoded, a volume's once its pixels
are made square), from a file's header, before any pixel is decoded; values
that are not finite; and the one error a bad file raises, naming the file
and the problem."""
from __future__ import annotations

import numpy as np


class ImageReadError(ValueError):
    """Raised with a message "<file name>: <what is wrong>" (e.g. "slice.png: not a readable image (plain text)")."""


# Limits checked from the header, before any pixel is decoded (docs/reliability.md).
MIN_IMAGE_SIDE = 16  # px; smaller is an icon or a thumbnail, not a CT slice
MAX_IMAGE_PIXELS = 50_000_000  # 50 megapixels: ~150 MB as RGB; more is a mistake or a decompression bomb


# Bounded work per input: a file is identified from its first bytes, and only
# a known format is parsed. MAX_FILE_BYTES caps what is read into memory;
# core.data.dicom caps the DICOM header parsed; decoding is capped by MAX_IMAGE_PIXELS.
MAX_FILE_BYTES = 256 * 2**20


# A whole scan (core.data.scans, core.data.nifti). A thin-slice chest CT (0.625 mm over 40 cm) has about 650
# slices; more is a whole-body scan or a mistake.
MAX_SLICES = 1000
MAX_VOXELS = 512 * 512 * MAX_SLICES  # 262 M voxels: 262 MB as 8-bit grey, the most a scan may hold decoded
MAX_SCAN_BYTES = 1024 * 2**20  # 1 GB of files (uncompressed zip members and NIfTI voxels included)


def check_finite(name: str, values: np.ndarray, what: str = "pixel values") -> np.ndarray:
    """`values` when every one is finite; a NaN or an infinity has no grey level to show."""
    if not np.isfinite(values).all():
        raise ImageReadError(f"{name}: {what} include NaN or infinity")
    return values


def check_size(name: str, width: int, height: int, frames: int = 1) -> None:
    megapixels = width * height * frames / 1e6
    if megapixels > MAX_IMAGE_PIXELS / 1e6:
        raise ImageReadError(f"{name}: image too large ({width}x{height} px"
                             f"{f' x {frames} frames' if frames > 1 else ''} = {megapixels:.0f} "
                             f"megapixels; the limit is {MAX_IMAGE_PIXELS / 1e6:.0f})")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageReadError(f"{name}: image too small ({width}x{height} px; a CT slice needs "
                             f"at least {MIN_IMAGE_SIDE} px a side)")


# Listing a DICOM study (core.data.dicom_study) reads headers only, within these bounds.
MAX_STUDY_FILES = 5000  # files whose headers are read: a few series of up to MAX_SLICES slices
MAX_SERIES = 100  # a CT study has a handful to a few dozen series; more is an archive, not a study
STUDY_HEADER_BYTES = 64 * 2**10  # read first from each file: a CT slice's header is a few kB
# All header bytes parsed for one listing: parsing hostile headers is slow (core.data.dicom.looks_like_dicom).
MAX_STUDY_HEADER_BYTES = 128 * 2**20
# A DICOMDIR indexes a study in about 300 bytes a file: 8 MB is some 25,000 files. Its bytes count against
# MAX_STUDY_HEADER_BYTES too, as they are parsed the same way.
MAX_DICOMDIR_BYTES = 8 * 2**20
# A study fetched from a PACS (core.data.pacs) is bounded by MAX_SERIES as a listed one is.
MAX_STUDIES_LISTED = 200  # studies one search shows; a narrower search finds the rest
