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
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.pixels import apply_modality_lut, get_decoder

from core.data import lung

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")


class ImageReadError(ValueError):
    """Raised with a message "<file name>: <what is wrong>" (e.g. "scan.png: not a readable image (plain text)")."""


# Limits checked from the header, before any pixel is decoded. The smallest
# COVID-CT image is 115x61 and the largest 1671x1225 (2 megapixels).
MIN_IMAGE_SIDE = 16  # px; smaller is an icon or a thumbnail, not a CT slice
MAX_IMAGE_PIXELS = 50_000_000  # 50 megapixels: ~150 MB as RGB; more is a mistake or a decompression bomb
DICOM_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Bounded work per input: a file is identified from its first bytes, and only
# a known format is parsed. MAX_FILE_BYTES caps what is read into memory (a
# 50 MP 16-bit DICOM is 100 MB); MAX_DICOM_HEADER_BYTES caps the DICOM elements
# parsed before the pixel data (a few kB in a CT slice; 1 s of CPU for 2 MB of
# the worst case, 8-byte empty elements); decoding is capped by MAX_IMAGE_PIXELS.
MAX_FILE_BYTES = 256 * 2**20
MAX_DICOM_HEADER_BYTES = 2 * 2**20
LUNG_WINDOW = (1500, -600)  # (width, level) in HU: air black, lung grey, soft tissue and bone white


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


def decode_image(opened, name: str, window=LUNG_WINDOW) -> np.ndarray:
    """The pixels of what open_image returned, as load_image gives them."""
    if isinstance(opened, pydicom.Dataset):
        return _decode_dicom(opened, name, window)
    with _pillow_errors(name), opened as image:
        return _decode_with_pillow(image)


def lung_window(hounsfield: np.ndarray, window=LUNG_WINDOW) -> np.ndarray:
    """Hounsfield units -> uint8 grey through `window` (width, level), as DICOM CT slices are shown."""
    return _apply_window(np.asarray(hounsfield, dtype=np.float64), window)


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
            if path.stat().st_size > MAX_FILE_BYTES:  # refused unread
                content = bytes(MAX_FILE_BYTES + 1)
            else:
                content = path.read_bytes()
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
    if data[128:132] == b"DICM":
        return _open_dicom(data, name)
    image = _open_with_pillow(data, name)
    if image is not None:
        return image
    if _looks_like_dicom(data):  # a DICOM without its preamble
        return _open_dicom(data, name)
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
    _check_size(name, *image.size)
    # MPO (phone JPEGs) keeps the photo itself as its first frame.
    if frames > 1 and image.format != "MPO":
        raise ImageReadError(f"{name}: animated or multi-page {image.format} ({frames} frames); "
                             "save the one slice to classify as PNG or JPEG")
    return image


def _check_size(name: str, width: int, height: int, frames: int = 1) -> None:
    megapixels = width * height * frames / 1e6
    if megapixels > MAX_IMAGE_PIXELS / 1e6:
        raise ImageReadError(f"{name}: image too large ({width}x{height} px"
                             f"{f' x {frames} frames' if frames > 1 else ''} = {megapixels:.0f} "
                             f"megapixels; the limit is {MAX_IMAGE_PIXELS / 1e6:.0f})")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageReadError(f"{name}: image too small ({width}x{height} px; a CT slice needs "
                             f"at least {MIN_IMAGE_SIDE} px a side)")


def _verify(image: Image.Image) -> None:
    """Find truncated or corrupt data without a full decode."""
    if image.format == "JPEG":
        image.draft(image.mode, (1, 1))  # decode at the smallest DCT scale, 1/8
        image.load()
    else:
        image.verify()  # PNG: every chunk present with its checksum


def _decode_with_pillow(image: Image.Image) -> np.ndarray:
    image.load()  # decode now, so truncated files fail here
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit / 32-bit grey: use the full 8-bit range for the values present.
        return _gray_to_rgb(_scale_to_uint8(np.asarray(image, dtype=np.float64)))
    if image.has_transparency_data:
        # Transparent areas become black, like the background of a CT.
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def _looks_like_dicom(data: bytes) -> bool:
    """A DICOM data set without its preamble starts with an element of the
    file meta group (0002) or of the identifying group (0008); nothing else is
    parsed (a forced parse of 50 MB of zeros took 45 s). The first 64 kB must
    then parse as elements naming a modality or SOP class, or reach pixel data."""
    if data[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    try:
        header, pixels_at = _dicom_header(data[:2**16])
    except Exception:  # force=True parsing of non-DICOM bytes can fail in many ways
        return False
    return "Modality" in header or "SOPClassUID" in header or pixels_at is not None


def _dicom_header(data: bytes) -> tuple[pydicom.Dataset, int | None]:
    """The elements before the pixel data, and where the pixel data element
    starts (None if `data` has none)."""
    buffer = io.BytesIO(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # forced parsing of damaged bytes warns a lot
        header = pydicom.dcmread(buffer, force=True, stop_before_pixels=True)
    at = buffer.tell()
    # Group 7FE0 (pixel data), little or big endian.
    return header, at if data[at:at + 2] in (b"\xe0\x7f", b"\x7f\xe0") else None


def _dicom_element_end(data: bytes, at: int, header: pydicom.Dataset) -> int:
    """Where the element starting at `at` (the pixel data) ends: what follows
    it is not parsed, as a file padded with megabytes of junk after its
    pixels would take as long as the forced parse above."""
    implicit, little = getattr(header, "original_encoding", (False, True))
    order = "<" if little is not False else ">"
    if implicit:
        start, (length,) = at + 8, struct.unpack(order + "I", data[at + 4:at + 8])
    else:  # pixel data VRs (OB, OW, OF, OD) have a 4-byte length after 2 reserved bytes
        start, (length,) = at + 12, struct.unpack(order + "I", data[at + 8:at + 12])
    if length == 0xFFFFFFFF:  # encapsulated frames, up to the sequence delimiter
        end = data.find(b"\xfe\xff\xdd\xe0" if order == "<" else b"\xff\xfe\xe0\xdd", start)
        return len(data) if end < 0 else end + 8
    return min(len(data), start + length)


def _open_dicom(data: bytes, name: str) -> pydicom.Dataset:
    """The dataset, with pixel data that an installed decoder reads and a size
    within the limits; pixels not decoded yet."""
    try:
        header, pixels_at = _dicom_header(data[:MAX_DICOM_HEADER_BYTES])
        if pixels_at is None:
            if len(data) > MAX_DICOM_HEADER_BYTES:
                raise ImageReadError(f"{name}: no DICOM pixel data in the first "
                                     f"{MAX_DICOM_HEADER_BYTES // 2**20} MB (the header of a CT slice is a few kB)")
            raise ImageReadError(f"{name}: DICOM file has no pixel data")
        end = _dicom_element_end(data, pixels_at, header)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(io.BytesIO(data[:end]), force=True)
    except ImageReadError:
        raise
    except Exception as error:
        raise ImageReadError(f"{name}: not a readable DICOM file ({error})") from error
    if not any(tag in dataset for tag in DICOM_PIXEL_TAGS):
        raise ImageReadError(f"{name}: DICOM file has no pixel data")
    syntax = getattr(dataset, "file_meta", {}).get("TransferSyntaxUID")
    if syntax is not None and not _can_decode(syntax):
        raise ImageReadError(f"{name}: unsupported DICOM transfer syntax {syntax.name!r} "
                             f"({syntax}): no decoder for it is installed")
    if "Rows" not in dataset or "Columns" not in dataset:
        raise ImageReadError(f"{name}: DICOM file has no image size (Rows, Columns)")
    with _dicom_value_errors(name, "image size"):
        _check_size(name, int(dataset.Columns), int(dataset.Rows), int(dataset.get("NumberOfFrames") or 1))
    return dataset


@contextlib.contextmanager
def _dicom_value_errors(name: str, what: str):
    """A tag whose value does not convert (a RescaleSlope of "abc", a Rows of
    -1) as ImageReadError naming the file; pydicom raises many kinds."""
    try:
        yield
    except ImageReadError:
        raise
    except Exception as error:
        raise ImageReadError(f"{name}: DICOM {what} unreadable ({type(error).__name__}: {error})") from error


def _can_decode(syntax) -> bool:
    try:
        return get_decoder(syntax).is_available
    except (NotImplementedError, ValueError):  # e.g. MPEG video, or not a UID: no decoder at all
        return False


def _decode_dicom(dataset: pydicom.Dataset, name: str, window) -> np.ndarray:
    with _dicom_value_errors(name, "pixel values"):
        return _dicom_to_rgb(dataset, name, window)


def _dicom_to_rgb(dataset: pydicom.Dataset, name: str, window) -> np.ndarray:
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # e.g. corrupt compressed data
        syntax = getattr(dataset, "file_meta", {}).get("TransferSyntaxUID", "unknown")
        raise ImageReadError(
            f"{name}: cannot decode DICOM pixel data (transfer syntax {syntax}): {error}") from error

    if int(dataset.get("SamplesPerPixel", 1)) == 3:
        if pixels.ndim == 4:
            pixels = pixels[len(pixels) // 2]
        return pixels if pixels.dtype == np.uint8 else _scale_to_uint8(pixels.astype(np.float64))

    if pixels.ndim == 3:  # a multi-frame series: show its middle slice
        pixels = pixels[len(pixels) // 2]
    is_ct = dataset.get("Modality") == "CT" or (
        "Modality" not in dataset and "RescaleIntercept" in dataset)
    if is_ct and window is not None:
        hounsfield = apply_modality_lut(pixels, dataset).astype(np.float64)
        gray = _apply_window(hounsfield, window)
    else:
        gray = _scale_to_uint8(pixels.astype(np.float64))
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        gray = 255 - gray  # MONOCHROME1 stores white as the lowest value
    return _gray_to_rgb(gray)


def _apply_window(hounsfield: np.ndarray, window) -> np.ndarray:
    width, level = window
    low = level - width / 2
    scaled = (hounsfield - low) / width * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) / (high - low) * 255.0).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


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


def model_input(image: np.ndarray, size: int, lung_crop: bool = False) -> np.ndarray:
    """What a model sees of a decoded scan: its lung fields (core.data.lung, when
    the run crops to them), resized to size x size (uint8)."""
    return resize_image(lung.crop_to_lungs(image) if lung_crop else image, size)


def load_images(paths, size: int, progress=None, lung_crop: bool = False) -> np.ndarray:
    """Decode, crop (lung_crop) and resize once: uint8 array N x size x size x 3.

    progress(done, total) is called after each image.
    """
    paths = list(paths)
    images = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        images[i] = model_input(load_image(path), size, lung_crop)
        if progress is not None:
            progress(i + 1, len(paths))
    return images


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
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
            continue
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            pass  # not a format Pillow knows (maybe DICOM), or too large to open
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
            sizes.append((int(dataset.Columns), int(dataset.Rows)))
        except Exception:  # unreadable, or DICOM without an image
            sizes.append((np.nan, np.nan))
    return pd.DataFrame(sizes, columns=["width", "height"], dtype=float)
