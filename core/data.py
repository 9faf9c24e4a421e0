"""Data: read CT images, index the dataset into splits, audit duplicates, and
build tf.data pipelines.

Images are decoded by content, never by extension (COVID-CT has JPEGs named
.png), and always come out as uint8 RGB so every model sees the same input.
Splits keep each patient in one split, because slices of one patient are
near copies of each other and would leak between train and test.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import struct
import warnings
from pathlib import Path

import cv2
import imagehash
import keras
import numpy as np
import pandas as pd
import pydicom
import tensorflow as tf
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.pixels import apply_modality_lut, get_decoder
from sklearn.model_selection import StratifiedGroupKFold

from core import lung

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")
METADATA_EXTENSIONS = (".csv", ".xlsx")

# Column names (lower case, '_'/'-' read as spaces) that hold the image file
# name or the patient in a metadata table.
FILE_NAME_COLUMNS = ("file name", "filename", "image name", "image", "file", "image path", "path")
PATIENT_COLUMNS = ("patient id", "patientid", "patient", "subject id", "subject")


class ImageReadError(ValueError):
    """Raised with a message "<file name>: <what is wrong>" (e.g. "scan.png: not a readable image (plain text)")."""


# Limits checked from the header, before any pixel is decoded. The smallest
# COVID-CT image is 115x61 and the largest 1671x1225 (2 megapixels).
MIN_IMAGE_SIDE = 16  # px; smaller is an icon or a thumbnail, not a CT slice
MAX_IMAGE_PIXELS = 50_000_000  # 50 megapixels: ~150 MB as RGB; more is a mistake or a decompression bomb
MIN_IMAGES_PER_CLASS = 2  # per class, after bad files are left out; fewer is an error
DICOM_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Bounded work per input: a file is identified from its first bytes, and only
# a known format is parsed. MAX_FILE_BYTES caps what is read into memory (a
# 50 MP 16-bit DICOM is 100 MB); MAX_DICOM_HEADER_BYTES caps the DICOM elements
# parsed before the pixel data (a few kB in a CT slice; 1 s of CPU for 2 MB of
# the worst case, 8-byte empty elements); decoding is capped by MAX_IMAGE_PIXELS.
MAX_FILE_BYTES = 256 * 2**20
MAX_DICOM_HEADER_BYTES = 2 * 2**20


# ---------------------------------------------------------------------------
# Reading images
# ---------------------------------------------------------------------------

def load_image(source, name: str | None = None, window=(1500, -600)) -> np.ndarray:
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
    data, name = _read_bytes(source, name)
    opened = _open(data, name)
    if isinstance(opened, pydicom.Dataset):
        return _decode_dicom(opened, name, window)
    with _pillow_errors(name), opened as image:
        return _decode_with_pillow(image)


def check_image(source, name: str | None = None) -> None:
    """Raise the ImageReadError load_image would, as far as a cheap check can
    tell: headers and sizes, PNG checksums, JPEG data decoded at 1/8 scale,
    DICOM header and decoder. About 1 ms an image on COVID-CT."""
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
    """What a model sees of a decoded scan: its lung fields (core.lung, when
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


# ---------------------------------------------------------------------------
# Indexing and splitting
# ---------------------------------------------------------------------------

def source_name(folder) -> str:
    """What a source is called: its dataset folder's name."""
    return Path(folder).resolve().name


def source_dirs(data_dir) -> list[Path]:
    """The dataset folders named by `data_dir`: one path, several joined with
    os.pathsep (as in $COVIDCT_DATA or the CLI's --data-dir), or a list."""
    parts = data_dir if isinstance(data_dir, (list, tuple)) else str(data_dir).split(os.pathsep)
    folders = [Path(part.strip()).expanduser() for part in map(str, parts) if part.strip()]
    if not folders:
        raise ValueError("no dataset folder given")
    names = [source_name(folder) for folder in folders]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"two dataset folders share the name {repeated[0]!r}: each source is known by its "
                         "folder's name, so rename one")
    return folders


def index_dataset(root, positive_class: str = "COVID", seed: int = 0,
                  val_fraction: float = 0.15, test_fraction: float = 0.2,
                  use_official_splits: bool = True, check_files: bool = True) -> pd.DataFrame:
    """One row per image: path, relpath, label, y, split, patient_id, source (sorted by relpath).

    `root` is a dataset folder, or several (source_dirs): each image keeps
    its `source`, the name of its folder. With several, relpath and patient_id
    start with the source ("COVID-CT/COVID/1.png", "COVID-CT:patient 7"), so
    they stay unique, and every source must have the same two class folders.

    A source with split lists in root/splits (and use_official_splits) keeps
    them; the images of the other sources are split together, stratified by
    source and class and grouped by patient, deterministic for `seed`.
    df.attrs["split_source"] says which.

    Bad input is left out and reported, all of it at once: images that
    check_image refuses (check_files=True; under 1 s for COVID-CT's 746) and
    split-list entries naming files that do not exist. df.attrs["problems"]
    lists "relpath: reason" for each, and a warning says how many. ValueError
    if too few remain to train: a class with fewer than MIN_IMAGES_PER_CLASS
    images, or none in the train split.
    """
    folders = source_dirs(root)
    several = len(folders) > 1
    parts, problems, described = [], {}, []
    for folder in folders:
        part, described_split = _index_source(folder, positive_class, use_official_splits, check_files,
                                              problems, prefix=several)
        parts.append(part)
        if described_split:
            described.append(described_split)
    index = pd.concat(parts, ignore_index=True)
    classes = sorted(index["label"].unique())
    if len(classes) != 2:
        raise ValueError(f"the dataset folders {', '.join(str(f) for f in folders)} do not share the same two "
                         f"class folders: found {classes}")

    unsplit = index["split"].isna().to_numpy()
    if unsplit.any():
        # Strata of source x class; with one source just the class, as before there were sources.
        strata = (index["y"] + 2 * pd.factorize(index["source"])[0]).to_numpy()[unsplit]
        index.loc[unsplit, "split"] = _grouped_split(strata, index["patient_id"][unsplit].to_numpy(),
                                                     seed, val_fraction, test_fraction)
        described.append(f"split by patient, stratified by {'source and ' if several else ''}class (seed {seed}, "
                         f"val {val_fraction}, test {test_fraction})")
    index.attrs["split_source"] = "; ".join(described)
    _require_enough(", ".join(str(f.resolve()) for f in folders), index, classes, problems)
    index.attrs["problems"] = [problems[relpath] for relpath in sorted(problems)]
    if problems:
        warnings.warn(f"{folders[0] if not several else 'datasets'}: left out {len(problems)} images or "
                      f"split-list entries (index.attrs['problems']):{_listing(problems)}")
    index = index.sort_values("relpath", ignore_index=True)
    return index[["path", "relpath", "label", "y", "split", "patient_id", "source"]]


def _index_source(root: Path, positive_class: str, use_official_splits: bool, check_files: bool,
                  problems: dict, prefix: bool) -> tuple[pd.DataFrame, str]:
    """One dataset folder's images with labels, patients and, where it has
    split lists, their split (else NaN); adds what it leaves out to
    `problems`. Returns the index and how its split was made ("" for none)."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise ValueError(f"{root}: dataset folder not found")
    index = _list_images(root)
    classes = sorted(index["label"].unique())
    if positive_class not in classes:
        raise ValueError(f"{root}: positive class {positive_class!r} is not one of the "
                         f"class folders {classes}")
    found = unreadable_images(index) if check_files else {}
    index = index[~index["relpath"].isin(found)].reset_index(drop=True)
    _require_enough(root, index, classes, found)
    index["y"] = (index["label"] == positive_class).astype(int)
    index["patient_id"] = patient_ids(root, index)
    index["source"] = root.name
    index["split"] = np.full(len(index), None, dtype=object)

    split_files = _find_split_files(root / "splits", classes) if use_official_splits else {}
    described = ""
    if split_files:
        index["split"] = _official_splits(root, index, split_files, found)
        described = "split lists in " + (root / "splits").as_posix()
    if prefix:  # several sources: keep relpaths and patients unique across them
        found = {f"{root.name}/{relpath}": f"{root.name}/{reason}" for relpath, reason in found.items()}
        index["relpath"] = root.name + "/" + index["relpath"]
        index["patient_id"] = root.name + ":" + index["patient_id"]
    problems.update(found)
    return index, described


def resolve_image(data_dir, relpath: str, holdout_source: str = "") -> Path:
    """The file of an index's relpath: under the dataset folder, or, with
    several sources, under the source its relpath starts with. A run that
    held a source out indexed only the others (TrainConfig.training_sources)."""
    folders = [folder for folder in source_dirs(data_dir) if source_name(folder) != holdout_source]
    if len(folders) == 1:
        return folders[0] / relpath
    source, _, rest = relpath.partition("/")
    by_name = {source_name(folder): folder for folder in folders}
    if source not in by_name:
        raise ValueError(f"{relpath}: its source {source!r} is not one of the dataset folders {sorted(by_name)}")
    return by_name[source] / rest


def unreadable_images(index: pd.DataFrame) -> dict:
    """{relpath: "relpath: reason"} for the images load_image would refuse."""
    problems = {}
    for path, relpath in zip(index["path"], index["relpath"]):
        try:
            check_image(path, name=relpath)
        except ImageReadError as error:
            problems[relpath] = str(error)
    return problems


def _require_enough(root: Path, index: pd.DataFrame, classes: list, problems: dict) -> None:
    """ValueError, with every problem found, if a class has too few images to
    train on (overall, and in the train split once there is one)."""
    counts = index["label"].value_counts()
    short = [f"{label} has {counts.get(label, 0)} images (need {MIN_IMAGES_PER_CLASS})"
             for label in classes if counts.get(label, 0) < MIN_IMAGES_PER_CLASS]
    if "split" in index:
        in_train = index.loc[index["split"] == "train", "label"].value_counts()
        short += [f"{label} has no images in the train split" for label in classes
                  if label not in in_train]
    if short:
        left_out = f"; {len(problems)} left out:{_listing(problems)}" if problems else ""
        raise ValueError(f"{root}: too few images to train: {'; '.join(short)}{left_out}")


def _listing(problems: dict) -> str:
    return "".join(f"\n  {problems[relpath]}" for relpath in sorted(problems))


def list_class_images(root: Path) -> tuple[pd.DataFrame, list[str]]:
    """(path, relpath, label) of every image in the class folders of `root`
    (sub-folders included: patient folders), sorted by relpath; and the names
    of class folders that hold no image."""
    rows, empty = [], []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = len(rows)
        for path in sorted(folder.rglob("*")):
            # Hidden files include macOS "._x.png" resource forks, which are not images.
            if (path.is_file() and not path.name.startswith(".")
                    and path.suffix.lower() in IMAGE_EXTENSIONS):
                rows.append({"path": str(path), "relpath": path.relative_to(root).as_posix(),
                             "label": folder.name})
        if len(rows) == found:
            empty.append(folder.name)
    index = pd.DataFrame(rows, columns=["path", "relpath", "label"])
    return index.sort_values("relpath", ignore_index=True), empty


def _list_images(root: Path) -> pd.DataFrame:
    index, empty = list_class_images(root)
    classes = sorted(index["label"].unique())
    if len(classes) != 2:
        raise ValueError(f"{root}: expected exactly 2 class folders holding images "
                         f"({', '.join(IMAGE_EXTENSIONS)}), found {len(classes)}: {classes}"
                         f"{f'; folders without images: {empty}' if empty else ''}")
    return index


def patient_ids(root: Path, index: pd.DataFrame) -> pd.Series:
    """Patient per image from the metadata tables in root/meta, else from the
    patient sub-folder the image sits in; an image with neither is its own
    group (patient_id = relpath)."""
    patients = {}
    meta = root / "meta"
    tables = sorted(p for p in meta.glob("*") if p.suffix.lower() in METADATA_EXTENSIONS) \
        if meta.is_dir() else []
    for table_path in tables:
        for relpath, patient in _read_patient_table(table_path, index).items():
            patients.setdefault(relpath, patient)
    return index["relpath"].map(lambda relpath: patients.get(relpath) or _patient_folder(relpath) or relpath)


def _patient_folder(relpath: str) -> str | None:
    """The patient sub-folder an image sits in (COVID/person001/12.jpg ->
    "COVID/person001"), or None for an image directly in its class folder.
    The class stays in the id: two classes' "patient1" folders are not
    assumed to be one patient."""
    parts = relpath.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else None


def _read_patient_table(table_path: Path, index: pd.DataFrame) -> dict:
    """{relpath: patient id} for the rows of one metadata table that name an image."""
    if table_path.suffix.lower() == ".csv":
        table = pd.read_csv(table_path, dtype=str, encoding_errors="replace")
    else:
        table = pd.read_excel(table_path, dtype=str)
    columns = {str(c).strip().lower().replace("_", " ").replace("-", " "): c for c in table.columns}
    name_column = next((columns[c] for c in FILE_NAME_COLUMNS if c in columns), None)
    patient_column = next((columns[c] for c in PATIENT_COLUMNS if c in columns), None)
    if name_column is None or patient_column is None:
        warnings.warn(f"{table_path.name}: no file-name and patient-id columns found "
                      f"(columns: {list(table.columns)}); patients from it are not used")
        return {}
    table = table[[name_column, patient_column]].dropna()
    names = table[name_column].str.strip().str.replace("\\", "/").str.split("/").str[-1]
    patients = table[patient_column].str.strip()

    # Match each name within every class folder; a name found in several
    # classes (e.g. "1.png" in both) goes to the class this table describes.
    lookups = {label: _name_lookup(group) for label, group in index.groupby("label")}
    candidates = [[lookup[n] for lookup in lookups.values() if n in lookup] for n in names]
    table_label = _table_class(table_path, candidates, list(lookups))
    result, ambiguous = {}, 0
    for found, patient in zip(candidates, patients):
        if len(found) > 1:
            found = [r for r in found if r.split("/")[0] == table_label]
            ambiguous += len(found) != 1
        if len(found) == 1 and patient:
            result.setdefault(found[0], patient)
    if ambiguous:
        warnings.warn(f"{table_path.name}: {ambiguous} file names exist in several class folders "
                      "and the table does not say which class it describes; they are not used")
    return result


def _table_class(table_path: Path, candidates: list, classes: list) -> str | None:
    """The class a metadata table describes: the one named in its file name
    (NonCOVID-CT-MetaInfo.csv -> NonCOVID), else the one most of its
    unambiguous names belong to."""
    words = {w.lower() for w in re.split(r"[^0-9A-Za-z]+", table_path.stem)}
    named = [c for c in classes if c.lower() in words]
    if len(named) == 1:
        return named[0]
    labels = [found[0].split("/")[0] for found in candidates if len(found) == 1]
    return max(sorted(set(labels)), key=labels.count) if labels else None


def _name_lookup(index: pd.DataFrame) -> dict:
    """File name -> relpath, also by the name without its image extension
    (COVID-CT's xlsx lists some files without ".png"); ambiguous keys dropped."""
    keys = {}
    for relpath in index["relpath"]:
        file_name = relpath.rsplit("/", 1)[-1]
        stem = file_name[: len(file_name) - len(Path(file_name).suffix)]
        for key in {file_name, stem}:
            keys.setdefault(key, set()).add(relpath)
    return {key: next(iter(found)) for key, found in keys.items() if len(found) == 1}


def _find_split_files(splits_dir: Path, classes: list) -> dict:
    """{(split, class): path} for lists named like trainCT_COVID.txt: the name
    starts with the split, and the class follows the last '_'."""
    if not splits_dir.is_dir():
        return {}
    found = {}
    for path in sorted(splits_dir.glob("*.txt")):
        split = next((s for s in SPLITS if path.name.lower().startswith(s)), None)
        if split is None or "_" not in path.stem:
            continue
        class_name = path.stem.rsplit("_", 1)[1]
        label = next((c for c in classes if c.lower() == class_name.lower()), None)
        if label is None:
            raise ValueError(f"{path}: class {class_name!r} is not one of the class folders {classes}")
        if (split, label) in found:
            raise ValueError(f"{path}: a second list for {split}/{label} "
                             f"(first: {found[split, label].name})")
        found[split, label] = path
    return found


def _official_splits(root: Path, index: pd.DataFrame, split_files: dict,
                     problems: dict) -> pd.Series:
    """Split per image from the lists; entries naming missing files are added
    to `problems` (those already left out as unreadable are skipped quietly)."""
    split_of, known = {}, set(index["relpath"])
    for (split, label), path in split_files.items():
        # Strip '\r' (CRLF files) and skip blank lines (and a missing final newline is fine).
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
        for relpath in sorted({f"{label}/{n}" for n in names if n}):
            if relpath not in known:
                if relpath not in problems:
                    problems[relpath] = (f"{relpath}: listed in "
                                         f"{path.relative_to(root).as_posix()} but not found")
            elif split_of.setdefault(relpath, split) != split:
                raise ValueError(f"{path}: {relpath} is also listed in split {split_of[relpath]!r}")
    unlisted = index.loc[~index["relpath"].isin(split_of), "relpath"].tolist()
    if unlisted:
        raise ValueError(f"{root / 'splits'}: {len(unlisted)} images are in no split list "
                         f"(e.g. {', '.join(unlisted[:5])}); add them to a list, or pass "
                         f"use_official_splits=False to split by patient")
    return index["relpath"].map(split_of)


def _grouped_split(y: np.ndarray, groups: np.ndarray, seed: int,
                   val_fraction: float, test_fraction: float) -> np.ndarray:
    """Hold out test, then val, each as one fold of a StratifiedGroupKFold.

    A fraction f becomes 1 of round(1/f) folds of whole patients, so the sizes
    are close to, not exactly, the fractions (0.15 of what is left after a 0.2
    test split gives 5 folds: val is 16% of all images).
    """
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) "
                         "must be >= 0 and add up to less than 1")
    split = np.full(len(y), "train", dtype=object)
    remaining = np.arange(len(y))
    for name, fraction in (("test", test_fraction), ("val", val_fraction / (1 - test_fraction))):
        if fraction <= 0:
            continue
        n_folds = max(2, round(1 / fraction))
        n_patients = len(np.unique(groups[remaining]))
        if n_patients < n_folds:
            raise ValueError(f"only {n_patients} patients left to make a {name} split of "
                             f"{fraction:.0%}: need at least {n_folds}")
        folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        _, held_out = next(folds.split(remaining, y[remaining], groups[remaining]))
        split[remaining[held_out]] = name
        remaining = remaining[split[remaining] == "train"]
    return split


def cross_validation_split(index: pd.DataFrame, folds: int, fold: int, seed: int = 0) -> pd.DataFrame:
    """The index with its train and validation images regrouped for k-fold
    cross-validation: `folds` folds of whole patients, stratified by class
    (StratifiedGroupKFold, shuffled with `seed`); fold `fold` (0-based)
    becomes the validation split, the others train. Test images stay as
    they are, in no fold. Every train + val image validates in exactly one
    fold, so k runs score a recipe on all of them instead of on one small
    validation split."""
    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"fold {fold} of {folds}: need at least 2 folds and 0 <= fold < folds")
    pool = index.index[index["split"].isin(["train", "val"])].to_numpy()
    n_patients = index.loc[pool, "patient_id"].nunique()
    if n_patients < folds:
        raise ValueError(f"only {n_patients} patients in train + val: cannot make {folds} folds")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    _, held_out = list(splitter.split(pool, index.loc[pool, "y"], index.loc[pool, "patient_id"]))[fold]
    regrouped = index.copy()
    regrouped.loc[pool, "split"] = "train"
    regrouped.loc[pool[held_out], "split"] = "val"
    regrouped.attrs = dict(index.attrs, split_source=f"{index.attrs.get('split_source', 'split')}; train + val "
                                                     f"regrouped by patient, fold {fold + 1} of {folds} "
                                                     f"validates (seed {seed})")
    return regrouped


def source_counts(index: pd.DataFrame) -> pd.DataFrame:
    """Images per source and split (rows) x label (columns, then "total"), for a multi-source index."""
    counts = pd.crosstab([index["source"], index["split"]], index["label"], margins=True, margins_name="total")
    return counts.rename_axis(index=["source", "split"], columns="label")


def split_counts(index: pd.DataFrame) -> pd.DataFrame:
    """Images per split (rows train/val/test, then "total") x label (columns, then "total")."""
    counts = pd.crosstab(index["split"], index["label"], margins=True, margins_name="total")
    present = [s for s in SPLITS if s in counts.index]
    return counts.reindex(present + ["total"]).rename_axis(index="split", columns="label")


# ---------------------------------------------------------------------------
# Duplicate audit
# ---------------------------------------------------------------------------

def audit_duplicates(index: pd.DataFrame, max_distance: int = 6, progress=None) -> pd.DataFrame:
    """Exact (sha256 of the bytes) and near (64-bit pHash of the grey image,
    Hamming distance <= max_distance) duplicate pairs that cross splits,
    classes or sources, the ones that leak or conflict; cross-class pairs first.

    Measured on COVID-CT (746 images, official split): pHash distances of the
    two known cross-class copies (kjr-21-e24-p5-29/-31 vs 71%0/71%1) are 2 and
    4. At max_distance 6, 9 pairs cross a split or class: those two, a figure
    printed twice in one paper (20040782-p24-1533-6 val ~ p25-1543 test) and 6
    look-alike CT slices; at 4 only the two known pairs; at 8, 53 pairs. dHash
    finds the known pairs (1 and 3) but with more look-alikes (16 at 3); pHash
    distances are always even, as half its bits are set.
    progress(done, total) is called after each image is hashed.
    """
    index = index.sort_values("relpath", ignore_index=True)
    digests, hashes = [], []
    for i, (path, relpath) in enumerate(zip(index["path"], index["relpath"])):
        content = Path(path).read_bytes()
        digests.append(hashlib.sha256(content).hexdigest())
        gray = Image.fromarray(load_image(content, name=relpath)).convert("L")
        hashes.append(np.packbits(imagehash.phash(gray).hash.ravel()))
        if progress is not None:
            progress(i + 1, len(index))

    # All pairs at once: XOR the 64-bit hashes and count the differing bits.
    codes = np.array(hashes, dtype=np.uint8).reshape(len(index), 8).view(np.uint64).ravel()
    a, b = np.triu_indices(len(index), k=1)
    distance = np.bitwise_count(codes[a] ^ codes[b]).astype(int)
    digests = np.array(digests)
    exact = digests[a] == digests[b]
    labels, splits = index["label"].to_numpy(), index["split"].to_numpy()
    sources = index["source"].to_numpy() if "source" in index else np.zeros(len(index), dtype=object)
    cross_class = labels[a] != labels[b]
    cross_split = splits[a] != splits[b]
    # The same scan in two sources (public collections re-share each other's images) leaks just the same.
    cross_source = sources[a] != sources[b]
    keep = (exact | (distance <= max_distance)) & (cross_class | cross_split | cross_source)
    a, b = a[keep], b[keep]

    pairs = pd.DataFrame({
        "relpath_a": index["relpath"].to_numpy()[a], "relpath_b": index["relpath"].to_numpy()[b],
        "label_a": labels[a], "label_b": labels[b],
        "split_a": splits[a], "split_b": splits[b],
        "kind": np.where(exact[keep], "exact", "near"),
        "distance": distance[keep],
        "cross_class": cross_class[keep], "cross_split": cross_split[keep], "cross_source": cross_source[keep],
    })
    return pairs.sort_values(["cross_class", "distance", "relpath_a", "relpath_b"],
                             ascending=[False, True, True, True], ignore_index=True)


# ---------------------------------------------------------------------------
# Training pipeline
# ---------------------------------------------------------------------------

def augmentation_layers(rotation: float = 10.0, zoom: float = 0.1, contrast: float = 0.1,
                        flip: bool = True, seed: int | None = None) -> keras.Sequential:
    """Random rotation (+/- `rotation` degrees), zoom, contrast and horizontal
    flip, for float32 images in 0..255; a switch at 0/False leaves its layer
    out. What rotation and zooming out uncover is filled by mirroring the
    image's edge (black fill was tried: docs/experiments.md)."""
    def layer_seed(offset):
        # Distinct seeds, so the layers do not draw the same random numbers.
        return None if seed is None else seed + offset

    layers = []
    if rotation:
        layers.append(keras.layers.RandomRotation(rotation / 360, fill_mode="reflect", seed=layer_seed(0)))
    if zoom:
        layers.append(keras.layers.RandomZoom(zoom, fill_mode="reflect", seed=layer_seed(1)))
    if contrast:
        layers.append(keras.layers.RandomContrast(contrast, value_range=(0, 255), seed=layer_seed(2)))
    if flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=layer_seed(3)))
    if not layers:
        layers.append(keras.layers.Identity())  # an empty Sequential cannot be called
    return keras.Sequential(layers, name="augmentation")


def make_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, training: bool = False,
                 augment: keras.Sequential | None = None, seed: int = 0) -> tf.data.Dataset:
    """(float32 images 0..255 (B, S, S, 3), one-hot float32 labels (B, 2)) batches.

    Training: shuffled (seeded, reshuffled each epoch) and augmented per batch.
    Not training: batches in the given order, never augmented.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be N x S x S x 3, got shape {images.shape}")
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got {np.unique(labels)[:10]}")

    dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).map(
        lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, 2)),
        num_parallel_calls=tf.data.AUTOTUNE)
    if training and augment is not None:
        dataset = dataset.map(lambda x, y: (augment(x, training=True), y),
                              num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)
