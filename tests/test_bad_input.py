"""Bad input: every refusal is an ImageReadError "<file name>: <problem>",
and indexing leaves bad files out, reporting all of them at once.

All files are made here in tmp_path; only the last test reads COVID-CT.
"""
import io
import struct
import warnings
import zlib

import numpy as np
import pandas as pd
import pytest
from dicom_factory import ct_dataset, dicom_bytes
from PIL import Image, ImageFile
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000MCLossless

from core.data import datasets
from core.base.paths import data_dir
from core.data.images import load_image
from core.data.limits import ImageReadError, MIN_IMAGE_SIDE


def encode(image, format="PNG", **options):
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def noise(size=(32, 32), seed=0):
    """Random RGB: JPEG/PNG can not squeeze it, so a cut lands in the pixel data."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(params=["dataset file", "upload"])
def load(request, tmp_path):
    """load(content, name): load_image on a file on disk, or on a Streamlit-like upload."""
    def load(content, name, **options):
        if request.param == "upload":
            upload = io.BytesIO(content)
            upload.name = name
            return load_image(upload, **options)
        path = tmp_path / name
        path.write_bytes(content)
        return load_image(path, **options)
    return load


def refused(load, content, name, problem):
    with pytest.raises(ImageReadError, match=rf"^{name.replace('.', '[.]')}: .*{problem}"):
        load(content, name)


# ---------------------------------------------------------------------------
# load_image
# ---------------------------------------------------------------------------

def test_zero_bytes(load):
    refused(load, b"", "empty.png", r"empty file \(0 bytes\)")


def test_truncated_png(load):
    png = encode(noise())
    refused(load, png[: len(png) // 2], "cut.png", "truncated")


def test_truncated_jpeg(load):
    jpeg = encode(noise(), "JPEG", quality=95)
    refused(load, jpeg[: len(jpeg) // 2], "cut.jpg", "truncated")


def test_plain_text_named_png(load):
    refused(load, b"patient 12, slice 40\nno image here\n", "notes.png", "plain text starting 'patient 12")


def test_html_named_png(load):
    page = b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head></html>\n"
    refused(load, page, "download.png", "HTML page starting '<!DOCTYPE html>'")


def test_cmyk_jpeg_gives_the_right_colours(load):
    colours = [(200, 30, 60), (20, 160, 90), (40, 60, 220), (128, 128, 128)]
    rgb = np.concatenate([np.full((32, 32, 3), c, dtype=np.uint8) for c in colours], axis=1)
    jpeg = encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(jpeg)).mode == "CMYK"
    image = load(jpeg, "cmyk.jpg")
    assert image.dtype == np.uint8 and image.shape == (32, 128, 3)
    assert np.abs(image.astype(int) - rgb).max() <= 8  # JPEG loss only, no inverted/odd colours


def test_animated_gif_is_refused_but_a_still_gif_is_read(load):
    # Decision: refuse. Which frame is the slice to classify would be a guess.
    frames = [Image.new("L", (32, 32), v) for v in (0, 128, 255)]
    animated = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    refused(load, animated, "scroll.gif", r"animated or multi-page GIF \(3 frames\)")
    still = load(encode(frames[1], "GIF"), "still.gif")
    assert still.shape == (32, 32, 3) and (still == 128).all()


def test_16_bit_png_is_scaled_to_8_bit(load):
    # A 12-bit CT range stored in a 16-bit PNG: every value above 255 would clip to white.
    values = np.linspace(0, 4095, 32 * 32).astype(np.uint16).reshape(32, 32)
    png = encode(Image.fromarray(values))
    assert Image.open(io.BytesIO(png)).mode.startswith("I;16")
    image = load(png, "ct16.png")
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
    assert image.min() == 0 and image.max() == 255
    assert abs(int(image[16, 0, 0]) - 128) <= 1 and (image[..., 0] == image[..., 2]).all()


@pytest.mark.parametrize("size", [(1, 1), (15, 300), (300, 15)])
def test_too_small_is_refused_with_its_size(load, size):
    refused(load, encode(Image.new("L", size)), "tiny.png",
            rf"image too small \({size[0]}x{size[1]} px; .*at least {MIN_IMAGE_SIDE} px")


def test_smallest_allowed_size_is_read(load):
    side = MIN_IMAGE_SIDE
    assert load(encode(Image.new("L", (side, side))), "small.png").shape == (side, side, 3)


def png_header_only(width, height):
    """A valid PNG header for a huge 8-bit grey image, with almost no pixel data:
    what a decompression bomb looks like before it is decoded."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(width + 1))) + chunk(b"IEND", b""))


def test_over_the_pixel_limit_is_refused_before_decoding(load, monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixels were decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    # 64 megapixels: over our 50 MP limit, under Pillow's own ~89 MP warning.
    refused(load, png_header_only(8000, 8000), "bomb.png",
            r"image too large \(8000x8000 px = 64 megapixels; the limit is 50\)")


@pytest.mark.parametrize("side", [40, 50])  # Pillow warns above its limit, errors above twice it
def test_pillows_decompression_bomb_checks_become_image_read_errors(load, monkeypatch, side):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    refused(load, encode(Image.new("L", (side, side))), "bomb.png", "image too large .*decompression bomb")
    with warnings.catch_warnings():  # the warning filter is restored afterwards
        warnings.simplefilter("ignore")
        assert Image.open(io.BytesIO(encode(Image.new("L", (40, 40))))).size == (40, 40)


def ct_dicom(rows=32, columns=32, pixel_data=True, transfer_syntax=ExplicitVRLittleEndian):
    ds = ct_dataset(shape=(rows, columns), transfer_syntax=transfer_syntax)
    if pixel_data and transfer_syntax.is_compressed:
        # A compressed frame's start (JPEG-LS SOI + SOF55), then junk: only the syntax matters here.
        ds.add_new("PixelData", "OB", encapsulate([b"\xff\xd8\xff\xf7" + bytes(60)]))
    elif pixel_data:
        ds.PixelData = bytes(2 * min(rows * columns, 64 * 64))  # a header over the limit needs no pixels
    return dicom_bytes(ds)


def test_dicom_is_read(load):
    assert load(ct_dicom(), "slice.dcm").shape == (32, 32, 3)


def test_dicom_without_pixel_data(load):
    refused(load, ct_dicom(pixel_data=False), "header.dcm", "DICOM file has no pixel data")


def test_dicom_in_a_transfer_syntax_without_decoder(load):
    # JPEG-LS is decoded now (pylibjpeg); JPEG 2000 multi-component has no decoder (tests/test_dicom_codecs.py)
    refused(load, ct_dicom(transfer_syntax=JPEG2000MCLossless), "mc.dcm",
            r"unsupported DICOM transfer syntax 'JPEG 2000 Part 2 Multi-component Image Compression "
            r"\(Lossless Only\)' \(1\.2\.840\.10008\.1\.2\.4\.92\): no decoder for it exists here; "
            r"export the series uncompressed")


def test_dicom_size_limits_come_from_the_header(load):
    refused(load, ct_dicom(rows=8, columns=8), "tiny.dcm", r"image too small \(8x8 px")
    refused(load, ct_dicom(rows=10000, columns=10000), "huge.dcm", r"image too large \(10000x10000 px")


# ---------------------------------------------------------------------------
# index_dataset
# ---------------------------------------------------------------------------

def good_png(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    noise(seed=seed).save(path)


# A 50/50 split with no val keeps these tiny sets splittable without warnings.
SMALL_SPLIT = dict(use_official_splits=False, test_fraction=0.5, val_fraction=0)


def make_classes(root, n=6):
    for label in ("COVID", "NonCOVID"):
        for i in range(n):
            good_png(root / label / f"{i}.png", seed=i)


def write_splits(root, lists):
    (root / "splits").mkdir()
    for file_name, names in lists.items():
        (root / "splits" / file_name).write_text("\n".join(names))


def test_empty_dataset_folder(tmp_path):
    with pytest.raises(ValueError, match=r"exactly 2 class folders .*found 0: \[\]$"):
        datasets.index_dataset(tmp_path)
    (tmp_path / "COVID").mkdir()
    (tmp_path / "NonCOVID").mkdir()
    with pytest.raises(ValueError, match=r"found 0: \[\]; folders without images: \['COVID', 'NonCOVID'\]"):
        datasets.index_dataset(tmp_path)


def test_one_class_only(tmp_path):
    make_classes(tmp_path)
    for path in (tmp_path / "NonCOVID").iterdir():
        path.unlink()
    with pytest.raises(ValueError, match=r"found 1: \['COVID'\]; folders without images: \['NonCOVID'\]"):
        datasets.index_dataset(tmp_path)


def add_bad_files(root):
    (root / "COVID" / "empty.png").write_bytes(b"")
    (root / "COVID" / "notes.jpg").write_text("not an image")
    png, jpeg = encode(noise()), encode(noise(), "JPEG")
    (root / "NonCOVID" / "cut.png").write_bytes(png[: len(png) // 2])
    (root / "NonCOVID" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    Image.new("L", (8, 8)).save(root / "NonCOVID" / "icon.png")


BAD_FILES = {"COVID/empty.png": "empty file", "COVID/notes.jpg": "plain text",
             "NonCOVID/cut.jpg": "truncated", "NonCOVID/cut.png": "truncated",
             "NonCOVID/icon.png": "too small"}


def test_unreadable_files_are_left_out_and_all_reported(tmp_path):
    make_classes(tmp_path)
    add_bad_files(tmp_path)
    with pytest.warns(UserWarning, match=r"left out 5 images") as caught:
        index = datasets.index_dataset(tmp_path, **SMALL_SPLIT)
    (warning,) = [str(w.message) for w in caught if "left out" in str(w.message)]
    problems = index.attrs["problems"]
    assert [p.split(": ", 1)[0] for p in problems] == list(BAD_FILES)
    for problem, reason in zip(problems, BAD_FILES.values()):
        assert reason in problem.lower() and f"\n  {problem}" in warning
    assert len(index) == 12 and not index["relpath"].isin(BAD_FILES).any()


def test_check_files_false_keeps_them(tmp_path):
    make_classes(tmp_path)
    add_bad_files(tmp_path)
    index = datasets.index_dataset(tmp_path, **SMALL_SPLIT, check_files=False)
    assert len(index) == 17 and index.attrs["problems"] == []


def test_split_lists_naming_missing_files_are_reported_and_skipped(tmp_path):
    make_classes(tmp_path, n=4)
    (tmp_path / "NonCOVID" / "empty.png").write_bytes(b"")  # listed, but unreadable: reported once
    write_splits(tmp_path, {
        "trainCT_COVID.txt": ["0.png", "1.png", "gone.png"], "testCT_COVID.txt": ["2.png", "3.png"],
        "trainCT_NonCOVID.txt": ["0.png", "1.png", "empty.png"],
        "testCT_NonCOVID.txt": ["2.png", "3.png", "lost.png"]})
    with pytest.warns(UserWarning, match=r"left out 3 "):
        index = datasets.index_dataset(tmp_path)
    assert index.attrs["problems"] == [  # sorted by relpath
        "COVID/gone.png: listed in splits/trainCT_COVID.txt but not found",
        "NonCOVID/empty.png: empty file (0 bytes)",
        "NonCOVID/lost.png: listed in splits/testCT_NonCOVID.txt but not found"]
    assert pd.crosstab(index["split"], index["label"]).values.tolist() == [[2, 2], [2, 2]]


def test_a_class_with_no_readable_images_stops_with_every_problem(tmp_path):
    make_classes(tmp_path)
    add_bad_files(tmp_path)
    for i in range(6):
        (tmp_path / "NonCOVID" / f"{i}.png").write_bytes(b"<html></html>")
    with pytest.raises(ValueError, match=r"too few images to train: NonCOVID has 0 images \(need 2\); "
                                         r"11 left out:") as error:
        datasets.index_dataset(tmp_path, **SMALL_SPLIT)
    for relpath in [*BAD_FILES, *(f"NonCOVID/{i}.png" for i in range(6))]:
        assert f"\n  {relpath}: " in str(error.value)


def test_a_class_missing_from_the_train_split_stops(tmp_path):
    make_classes(tmp_path, n=2)
    write_splits(tmp_path, {
        "trainCT_COVID.txt": ["gone.png"], "testCT_COVID.txt": ["0.png", "1.png"],
        "trainCT_NonCOVID.txt": ["0.png"], "testCT_NonCOVID.txt": ["1.png"]})
    with pytest.raises(ValueError, match=r"COVID has no images in the train split; 1 left out:\n"
                                         r"  COVID/gone\.png: listed in splits/trainCT_COVID\.txt"):
        datasets.index_dataset(tmp_path)


@pytest.mark.skipif(not (data_dir() / "COVID").is_dir(), reason="COVID-CT dataset not found")
def test_covid_ct_has_no_problems():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "left out" warning
        index = datasets.index_dataset(data_dir())
    assert index.attrs["problems"] == []
    counts = datasets.split_counts(index)
    assert counts.loc[["train", "val", "test"], "COVID"].tolist() == [191, 60, 98]
    assert counts.loc[["train", "val", "test"], "NonCOVID"].tolist() == [234, 58, 105]
