"""Reading CT images: PNG, JPEG (anything Pillow reads) and DICOM, identified
by content, checked from their headers before any pixel is decoded, and
resized to what a model takes.

Images are decoded by content, never by extension (COVID-CT has JPEGs named
.png), and always come out as uint8 RGB so every model sees the same input.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
from PIL import Image, ImageOps, UnidentifiedImageError

from core.base import files
from core.data import lung
from core.data.dicom import (LUNG_WINDOW, MAX_DICOM_HEADER_BYTES, apply_window, decode_dicom, gray_to_rgb,
                             inflated, looks_like_dicom, open_dicom, scale_to_uint8)
from core.data.limits import MAX_FILE_BYTES, ImageReadError, check_finite, check_size

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")


def load_image(source, name: str | None = None, window=LUNG_WINDOW) -> np.ndarray:
    """Decode an image by its content into uint8 RGB (H x W x 3).

    `source` is a path, raw bytes, or a file-like object with .read() (a
    Streamlit upload); `name` is used in error messages. PNG/JPEG/anything
    Pillow reads becomes RGB (16-bit and float images scaled by their range,
    CMYK converted). DICOM CT is converted to Hounsfield units and shown
    through `window` (width, level), the lung window W1500/L-600 by default;
    window=None, and DICOM that is not CT, are scaled by their range instead.

    Refused with ImageReadError: empty, truncated or unknown files; images
    under MIN_IMAGE_SIDE px a side or over MAX_IMAGE_PIXELS (checked before
    decoding); animated or multi-page images (which slice to classify would
    be a guess); DICOM without pixel data or in a transfer syntax no
    installed decoder reads.
    """
    opened, name = open_image(source, name)
    return decode_image(opened, name, window)


def open_image(source, name: str | None = None):
    """(opened, name): the file identified and its header checked as
    load_image does, pixels not decoded yet (a pydicom Dataset or a Pillow
    image), so that a whole scan's limits can be checked before any decoding."""
    data, name = _read_bytes(source, name)
    return _open(data, name), name


def decode_image(opened, name: str, window=LUNG_WINDOW, frame: int | None = None) -> np.ndarray:
    """The pixels of what open_image returned, as load_image gives them;
    `frame` picks the frame of a multi-frame DICOM (default: the middle one)."""
    if isinstance(opened, pydicom.Dataset):
        return decode_dicom(opened, name, window, frame)
    with _pillow_errors(name), opened as image:
        return _decode_with_pillow(image, name)


def lung_window(hounsfield: np.ndarray, window=LUNG_WINDOW) -> np.ndarray:
    """Hounsfield units -> uint8 grey through `window` (width, level), as DICOM CT slices are shown."""
    return apply_window(np.asarray(hounsfield, dtype=np.float64), window)


def check_image(source, name: str | None = None) -> None:
    """Raise the ImageReadError load_image would, as far as a cheap check can
    tell: headers and sizes, PNG checksums, JPEG data decoded at 1/8 scale,
    DICOM header and decoder."""
    data, name = _read_bytes(source, name)
    opened = _open(data, name)
    if isinstance(opened, Image.Image):
        with _pillow_errors(name), opened as image:
            _verify(image)


def _read_bytes(source, name):
    """The content (at most MAX_FILE_BYTES, else ImageReadError) and the name for messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        content, name = bytes(source), name or "upload"
    elif hasattr(source, "read"):
        content, name = source.read(MAX_FILE_BYTES + 1), name or getattr(source, "name", None) or "upload"
    else:
        path = Path(source)
        name = name or path.name
        try:
            content = files.read_regular(path, MAX_FILE_BYTES)  # a regular file, never read past the bound
        except files.Refused as error:
            raise ImageReadError(f"{name}: {error}") from None
        except OSError as error:
            raise ImageReadError(f"{name}: cannot read file ({error.strerror or error})") from error
    if len(content) > MAX_FILE_BYTES:
        raise ImageReadError(f"{name}: file too large (over {MAX_FILE_BYTES // 2**20} MB)")
    return content, name


def _open(data: bytes, name: str):
    """Identify the content and check its header: an undecoded Pillow image or
    a pydicom Dataset."""
    if not data:
        raise ImageReadError(f"{name}: empty file (0 bytes)")
    if data[128:132] == b"DICM" or data[:2] == b"\x02\x00":  # DICOM file meta, with or without preamble
        data = inflated(data, name)
    if data[128:132] == b"DICM":
        return open_dicom(data, name)
    image = _open_with_pillow(data, name)
    if image is not None:
        return image
    if looks_like_dicom(data):  # a DICOM without its preamble
        return open_dicom(data, name)
    raise ImageReadError(f"{name}: not a readable image ({_describe_content(data)})")


@contextlib.contextmanager
def _pillow_errors(name: str):
    """Pillow's errors, and its decompression-bomb warning, as ImageReadError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (ImageReadError, UnidentifiedImageError):
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise ImageReadError(f"{name}: image too large ({error})") from error
    except Exception as error:  # a malformed file can fail anywhere in a decoder (struct.error, IndexError...)
        raise ImageReadError(f"{name}: not a readable image ({error})") from error


def _open_with_pillow(data: bytes, name: str) -> Image.Image | None:
    """The image with its header checked, pixels not decoded yet; None if
    Pillow does not know the format."""
    try:
        with _pillow_errors(name):
            image = Image.open(io.BytesIO(data))
            frames = getattr(image, "n_frames", 1)
    except UnidentifiedImageError:
        return None
    check_size(name, *image.size)
    # MPO (phone JPEGs) keeps the photo itself as its first frame.
    if frames > 1 and image.format != "MPO":
        raise ImageReadError(f"{name}: animated or multi-page {image.format} ({frames} frames); "
                             "save the one slice to classify as PNG or JPEG")
    return image


def _verify(image: Image.Image) -> None:
    """Find truncated or corrupt data without a full decode."""
    if image.format == "JPEG":
        image.draft(image.mode, (1, 1))  # decode at the smallest DCT scale, 1/8
        image.load()
    else:
        image.verify()  # PNG: every chunk present with its checksum


def _decode_with_pillow(image: Image.Image, name: str) -> np.ndarray:
    image.load()  # decode now, so truncated files fail here
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit / 32-bit grey: use the full 8-bit range for the values present.
        return gray_to_rgb(scale_to_uint8(check_finite(name, np.asarray(image, dtype=np.float64))))
    if image.has_transparency_data:
        # Transparent areas become black, like the background of a CT.
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def _describe_content(data: bytes) -> str:
    # A multi-byte character cut at byte 256 may leave a replacement char at the end.
    head = data[:256].decode("utf-8", errors="replace").rstrip("\ufffd")
    if "\ufffd" not in head and all(char.isprintable() or char.isspace() for char in head):
        first_line = head.strip().splitlines()[0][:60] if head.strip() else ""
        # A web page saved in place of the image is a common upload mistake.
        kind = "HTML page" if re.match(r"\s*<(!doctype html|html)", head, re.I) else "plain text"
        return f"{kind} starting {first_line!r}"
    return f"unknown format, first bytes {data[:8].hex(' ')}"


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 H x W x 3 -> uint8 size x size x 3 (cv2.INTER_AREA; plain square resize)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 H x W x 3 image, got {image.dtype} {image.shape}")
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def model_input(image: np.ndarray, size: int, lung_crop: bool = False, lung_mask: bool = False) -> np.ndarray:
    """What a model sees of a decoded slice: its lung view (core.data.lung.lung_view: cropped to
    and/or blanked outside the lung fields, as the run asks), resized to size x size (uint8)."""
    return resize_image(lung.lung_view(image, lung_crop, lung_mask), size)


def in_threads(function, *iterables):
    """function(*args) over the iterables, in one thread per core; yields the
    results in order. Decoding (Pillow, pydicom) and OpenCV's resizing and
    cropping release the GIL, so threads use every core without a process pool."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        yield from pool.map(function, *iterables)


def image_sizes(paths) -> pd.DataFrame:
    """Width and height of each image, read from its header without decoding
    the pixels (Pillow opens lazily; DICOM stops before the pixel data), so
    the whole dataset takes well under a second. Columns width, height (NaN
    for a file that neither can read)."""
    sizes = []
    for path in paths:
        try:  # the headers lie in the first bytes: a regular file's, never more than those
            head = io.BytesIO(files.read_regular(path, MAX_DICOM_HEADER_BYTES, head=True))
        except OSError:
            sizes.append((np.nan, np.nan))
            continue
        try:
            with Image.open(head) as image:
                sizes.append(image.size)
            continue
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            pass  # not a format Pillow knows (maybe DICOM), or too large to open
        try:
            head.seek(0)
            dataset = pydicom.dcmread(head, stop_before_pixels=True)
            sizes.append((int(dataset.Columns), int(dataset.Rows)))
        except Exception:  # unreadable, or DICOM without an image
            sizes.append((np.nan, np.nan))
    return pd.DataFrame(sizes, columns=["width", "height"], dtype=float)
