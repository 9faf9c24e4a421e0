"""DICOM slices: identified from their first bytes, their header parsed
within a bound, their pixel data decoded by an installed decoder and shown
through a window of Hounsfield units."""
from __future__ import annotations

import contextlib
import io
import struct
import warnings
import zlib

import numpy as np
import pydicom
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from core.data import dicom_frames
from core.data.limits import MAX_FILE_BYTES, ImageReadError, check_finite, check_size

# Scanners write values pydicom's checks warn about (COVID-CT-MD's UIDs are UUIDs): one warning per
# file would flood the log of a 300-file scan. What matters (sizes, positions) is checked where used.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


DICOM_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


MAX_DICOM_HEADER_BYTES = 2 * 2**20


LUNG_WINDOW = (1500, -600)  # (width, level) in HU: air black, lung grey, soft tissue and bone white


def looks_like_dicom(data: bytes) -> bool:
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


def dicom_header(data: bytes, name: str) -> pydicom.Dataset | None:
    """The elements before the pixel data, from a file's first bytes (a
    deflated file inflated as for decoding); None when `data` is not DICOM or
    reaches no pixel data in them (a DICOMDIR, a report, too few bytes).
    Nothing is decoded: this lists a study's series cheaply (core.data.dicom_study)."""
    if data[128:132] == b"DICM" or data[:2] == b"\x02\x00":
        data = inflated(data, name)
    if data[128:132] != b"DICM" and not looks_like_dicom(data):
        return None
    try:
        header, pixels_at = _dicom_header(data[:MAX_DICOM_HEADER_BYTES])
    except Exception:  # force=True parsing of damaged bytes can fail in many ways
        return None
    return header if pixels_at is not None else None


def open_dicom(data: bytes, name: str) -> pydicom.Dataset:
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
        raise ImageReadError(_no_decoder(name, syntax))
    if "Rows" not in dataset or "Columns" not in dataset:
        raise ImageReadError(f"{name}: DICOM file has no image size (Rows, Columns)")
    with dicom_value_errors(name, "image size"):
        # Per frame: one frame is decoded at a time; a multi-frame scan's total is core.data.scans' limit.
        check_size(name, int(dataset.Columns), int(dataset.Rows))
        dicom_frames.frame_count(dataset)  # a NumberOfFrames that is not a number is refused here
    return dataset


@contextlib.contextmanager
def dicom_value_errors(name: str, what: str):
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


def inflated(data: bytes, name: str) -> bytes:
    """A deflated DICOM (its data set zlib-compressed after the file meta)
    rewritten as the same file in Explicit VR Little Endian, inflated to at
    most MAX_FILE_BYTES: pydicom itself would inflate all of it, however
    large (a deflate bomb). Any other content is returned as it is."""
    buffer = io.BytesIO(data[:MAX_DICOM_HEADER_BYTES])  # a file meta is a few hundred bytes: bounded parsing
    try:
        pydicom.filereader.read_preamble(buffer, force=True)
        meta = pydicom.filereader._read_file_meta_info(buffer)  # the file meta alone, nothing inflated
    except Exception:  # no readable file meta: not deflated; the readers say what it is
        return data
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return data
    try:
        dataset = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[buffer.tell():], MAX_FILE_BYTES + 1)
    except zlib.error as error:
        raise ImageReadError(f"{name}: deflated DICOM data unreadable ({error})") from error
    if len(dataset) > MAX_FILE_BYTES:
        raise ImageReadError(f"{name}: deflated DICOM inflates to over {MAX_FILE_BYTES // 2**20} MB")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    rewritten = DicomBytesIO()
    write_file_meta_info(rewritten, meta, enforce_standard=True)
    return bytes(128) + b"DICM" + rewritten.getvalue() + dataset


def _no_decoder(name: str, syntax) -> str:
    """Why `syntax` is not decoded here and what to do, in plain words."""
    refusal = f"{name}: unsupported DICOM transfer syntax {syntax.name!r} ({syntax})"
    try:
        missing = get_decoder(syntax).missing_dependencies  # e.g. "pylibjpeg - requires pylibjpeg>=2.0 and ..."
    except (NotImplementedError, ValueError):  # e.g. MPEG video, or not a UID: no decoder at all
        missing = []
    pylibjpeg = [text for text in missing if text.startswith("pylibjpeg")]
    if missing:
        needs = (pylibjpeg or missing)[0].split(" - requires ", 1)[-1]
        return (f"{refusal}: its decoder needs {needs}, not installed here (pip install -r requirements.txt); "
                "or export the series uncompressed (Explicit VR Little Endian)")
    return (f"{refusal}: no decoder for it exists here; export the series uncompressed "
            "(Explicit VR Little Endian) from the PACS or viewer")


def decode_dicom(dataset: pydicom.Dataset, name: str, window, frame: int | None = None) -> np.ndarray:
    """uint8 RGB of the dataset's pixels (of `frame` in a multi-frame file, default its middle one)."""
    with dicom_value_errors(name, "pixel values"):
        return _dicom_to_rgb(dataset, name, window, frame)


def _dicom_to_rgb(dataset: pydicom.Dataset, name: str, window, frame: int | None = None) -> np.ndarray:
    frames = dicom_frames.frame_count(dataset)
    if frames > 1:  # decode one frame only: the whole file may be a scan of hundreds
        frame = frames // 2 if frame is None else frame
    try:
        # pydicom's function, not Dataset.pixel_array: that keeps the decoded pixels in the dataset.
        pixels = pixel_array(dataset, index=frame)
    except Exception as error:  # e.g. corrupt compressed data
        syntax = getattr(dataset, "file_meta", {}).get("TransferSyntaxUID", "unknown")
        raise ImageReadError(
            f"{name}: cannot decode DICOM pixel data (transfer syntax {syntax}): {error}") from error

    if int(dataset.get("SamplesPerPixel", 1)) == 3:
        if pixels.ndim == 4:
            pixels = pixels[len(pixels) // 2]
        return pixels if pixels.dtype == np.uint8 else scale_to_uint8(check_finite(name, pixels.astype(np.float64)))

    if pixels.ndim == 3:  # a multi-frame series: show its middle slice
        pixels = pixels[len(pixels) // 2]
    is_ct = dataset.get("Modality") == "CT" or (
        "Modality" not in dataset and "RescaleIntercept" in dataset)
    if is_ct and window is not None:
        hounsfield = dicom_frames.modality_values(pixels, dataset, frame).astype(np.float64)
        check_finite(name, hounsfield, "DICOM values in HU (RescaleSlope, RescaleIntercept)")
        gray = apply_window(hounsfield, window)
    else:
        gray = scale_to_uint8(check_finite(name, pixels.astype(np.float64)))
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        gray = 255 - gray  # MONOCHROME1 stores white as the lowest value
    return gray_to_rgb(gray)


def apply_window(hounsfield: np.ndarray, window) -> np.ndarray:
    width, level = window
    low = level - width / 2
    scaled = (hounsfield - low) / width * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) / (high - low) * 255.0).astype(np.uint8)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)
