"""What every reader refuses, and how it says so: limits checked from a
file's header before any pixel is decoded, and the one error a bad file
raises, naming the file and the problem."""
from __future__ import annotations


class ImageReadError(ValueError):
    """Raised with a message "<file name>: <what is wrong>" (e.g. "slice.png: not a readable image (plain text)")."""


# Limits checked from the header, before any pixel is decoded (docs/reliability.md).
MIN_IMAGE_SIDE = 16  # px; smaller is an icon or a thumbnail, not a CT slice
MAX_IMAGE_PIXELS = 50_000_000  # 50 megapixels: ~150 MB as RGB; more is a mistake or a decompression bomb


# Bounded work per input: a file is identified from its first bytes, and only
# a known format is parsed. MAX_FILE_BYTES caps what is read into memory;
# core.data.dicom caps the DICOM header parsed; decoding is capped by MAX_IMAGE_PIXELS.
MAX_FILE_BYTES = 256 * 2**20


def check_size(name: str, width: int, height: int, frames: int = 1) -> None:
    megapixels = width * height * frames / 1e6
    if megapixels > MAX_IMAGE_PIXELS / 1e6:
        raise ImageReadError(f"{name}: image too large ({width}x{height} px"
                             f"{f' x {frames} frames' if frames > 1 else ''} = {megapixels:.0f} "
                             f"megapixels; the limit is {MAX_IMAGE_PIXELS / 1e6:.0f})")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageReadError(f"{name}: image too small ({width}x{height} px; a CT slice needs "
                             f"at least {MIN_IMAGE_SIDE} px a side)")
