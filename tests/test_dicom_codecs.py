"""Compressed DICOM: every common transfer syntax decodes through pydicom's
pixel-data plugins (pylibjpeg with its libjpeg, openjpeg and rle plugins),
one pydicom test file each (only files that ship with pydicom: none is
downloaded); the real JPEG-Lossless series of COVID-CT-MD reads as one scan in
body-axis order; a multi-frame (enhanced) CT reads as a series; what still
cannot be decoded is refused saying what to do."""
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import ct_dataset, dicom_bytes, enhanced_ct_dataset
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (HTJ2K, DeflatedExplicitVRLittleEndian, HTJ2KLossless, JPEG2000, JPEG2000Lossless,
                         JPEG2000MCLossless, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless,
                         JPEGLSNearLossless, MPEG2MPML, RLELossless)

from core.data import dicom, images
from core.data import scans
from core.inference import scan_decision
from core.data.images import ImageReadError

SHARED_SERIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "external" / "COVID-CT-MD-dicom"

# One pydicom test file per transfer syntax: (file, the same image in a
# lossless syntax or None, the grey levels lossy compression may change).
TEST_FILES = {
    JPEGBaseline8Bit: ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm", 8),
    JPEGExtended12Bit: ("JPGExtended.dcm", None, 0),
    JPEGLosslessSV1: ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm", 0),
    JPEGLSLossless: ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm", 0),
    JPEGLSNearLossless: ("SC_rgb_jls_lossy_sample.dcm", "SC_rgb_rle.dcm", 3),
    JPEG2000Lossless: ("MR_small_jp2klossless.dcm", "MR_small.dcm", 0),
    JPEG2000: ("693_J2KI.dcm", None, 0),
    RLELossless: ("MR_small_RLE.dcm", "MR_small.dcm", 0),
    DeflatedExplicitVRLittleEndian: ("image_dfl.dcm", None, 0),
}


def local_test_file(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} does not ship with this pydicom")
    return path


@pytest.mark.parametrize("syntax", list(TEST_FILES), ids=lambda syntax: syntax.name)
def test_each_transfer_syntax_decodes(syntax):
    name, reference, tolerance = TEST_FILES[syntax]
    path = local_test_file(name)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert header.file_meta.TransferSyntaxUID == syntax
    image = images.load_image(path)
    assert image.shape == (header.Rows, header.Columns, 3) and image.dtype == np.uint8
    assert len(np.unique(image)) > 1  # an image, not a blank
    if reference:  # the pixels of the same image stored uncompressed (or RLE), within the lossy tolerance
        difference = image.astype(int) - images.load_image(local_test_file(reference))
        assert np.abs(difference).max() <= tolerance


@pytest.mark.parametrize("syntax", list(TEST_FILES) + [HTJ2KLossless, HTJ2K], ids=lambda syntax: syntax.name)
def test_a_decoder_is_installed_for_each_common_syntax(syntax):
    assert get_decoder(syntax).is_available  # HTJ2K has no local test file: openjpeg decodes it


@pytest.mark.parametrize("syntax", [JPEG2000MCLossless, MPEG2MPML], ids=lambda syntax: syntax.name)
def test_a_syntax_without_any_decoder_is_refused_saying_what_to_do(syntax):
    ds = ct_dataset(shape=(32, 32), transfer_syntax=syntax)
    ds.add_new("PixelData", "OB", encapsulate([bytes(64)]))
    with pytest.raises(ImageReadError, match=rf"^x\.dcm: unsupported DICOM transfer syntax '{re.escape(syntax.name)}' "
                                             r"\(.*\): no decoder for it exists here; export the series "
                                             r"uncompressed \(Explicit VR Little Endian\)"):
        images.load_image(dicom_bytes(ds), "x.dcm")


def test_a_missing_plugin_is_named(monkeypatch):
    decoder = get_decoder(JPEGLSLossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"gdcm": ("gdcm>=3.0.10",),
                                                  "pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1")})
    with pytest.raises(ImageReadError, match=r"^ls\.dcm: unsupported DICOM transfer syntax 'JPEG-LS Lossless "
                                             r"Image Compression' .*: its decoder needs pylibjpeg>=2\.0 and "
                                             r"pylibjpeg-libjpeg>=2\.1, not installed here \(pip install -r "
                                             r"requirements\.txt\); or export the series uncompressed"):
        images.load_image(local_test_file("MR_small_jpeg_ls_lossless.dcm"), "ls.dcm")


def test_a_deflate_bomb_is_refused_before_it_inflates(monkeypatch):
    ds = ct_dataset(np.zeros((256, 256), np.int16), transfer_syntax=DeflatedExplicitVRLittleEndian)
    deflated = dicom_bytes(ds)  # pydicom deflates the data set as it writes it: 128 kB of pixels in < 1 kB
    assert images.load_image(deflated, "ok.dcm").shape == (256, 256, 3)
    monkeypatch.setattr(dicom, "MAX_FILE_BYTES", 64 * 2**10)  # more than the file, less than it inflates to
    assert len(deflated) < dicom.MAX_FILE_BYTES
    with pytest.raises(ImageReadError, match=r"^bomb\.dcm: deflated DICOM inflates to over"):
        images.load_image(deflated, "bomb.dcm")


# ---------------------------------------------------------------------------
# The real JPEG-Lossless series (COVID-CT-MD)
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared_series() -> Path:
    if not SHARED_SERIES.is_dir():
        pytest.skip(f"COVID-CT-MD DICOM series not found at {SHARED_SERIES}")
    return SHARED_SERIES


def body_axis_order(folder: Path) -> list[str]:
    """The files' names sorted by ImagePositionPatient along the slice normal, feet to head, from pydicom alone."""
    headers = {path.name: pydicom.dcmread(path, stop_before_pixels=True) for path in folder.glob("*.dcm")}
    row, column = np.reshape(np.asarray(next(iter(headers.values())).ImageOrientationPatient, float), (2, 3))
    normal = np.cross(row, column)
    along = {name: np.dot(np.asarray(h.ImagePositionPatient, float), normal) * np.sign(normal[2])
             for name, h in headers.items()}
    return sorted(along, key=along.get)


@pytest.mark.parametrize("patient, slices", [("COVID/P002", 45), ("NonCOVID/cap002", 44)])
def test_the_shared_jpeg_lossless_series_reads_in_body_axis_order(shared_series, patient, slices):
    folder = shared_series / patient
    assert pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).file_meta.TransferSyntaxUID \
        == JPEGLosslessSV1
    read = scans.read_path(folder)
    assert read.kind == "DICOM series" and len(read.slices) == slices
    assert read.slice_names == body_axis_order(folder) != sorted(read.slice_names)
    assert np.all(np.diff(read.positions) > 0)
    assert all(s.shape == (512, 512) and s.dtype == np.uint8 for s in read.slices)
    # Lung window W1500/L-600: air and air-filled lung (under -900 HU) are a fair part of a
    # chest slice, neither none (values not HU) nor all; the middle slices show lung.
    middle = read.slices[slices // 2]
    assert 0.2 < np.mean(middle < images.lung_window(-900)) < 0.8
    assert scan_decision.lung_fraction(read.rgb(slices // 2)) > scan_decision.MIN_LUNG_AREA


def test_the_shared_series_decodes_to_hounsfield_units(shared_series):
    path = sorted((shared_series / "COVID/P002").glob("*.dcm"))[20]
    opened, name = images.open_image(path)
    hounsfield = opened.pixel_array * float(opened.RescaleSlope) + float(opened.RescaleIntercept)
    assert hounsfield.min() >= -1100 and np.percentile(hounsfield, 99) < 2000
    assert (images.decode_image(opened, name) == images.lung_window(hounsfield)[:, :, None]).all()


# ---------------------------------------------------------------------------
# Multi-frame (enhanced) CT
# ---------------------------------------------------------------------------

def volume(frames=5, side=48) -> np.ndarray:
    """HU frames that differ: frame k is -1000 (air) with a square of k * 200 - 900 HU."""
    hounsfield = np.full((frames, side, side), -1000, np.int16)
    for k in range(frames):
        hounsfield[k, 10:30, 10:30] = k * 200 - 900
    return hounsfield


@pytest.mark.parametrize("syntax", [None, RLELossless, JPEG2000Lossless], ids=["uncompressed", "RLE", "J2K"])
def test_an_enhanced_ct_reads_as_a_series(syntax):
    hounsfield = volume()
    positions = [4.0, 0.0, 8.0, 2.0, 6.0]  # frames stored out of body-axis order
    ds = enhanced_ct_dataset(hounsfield, positions)
    if syntax is not None:
        ds.compress(syntax)
    read = scans.read_files([("enhanced.dcm", dicom_bytes(ds))], "study")
    order = list(np.argsort(positions))
    assert read.kind == "DICOM series" and read.positions == sorted(positions) and read.notes == []
    assert read.slice_names == [f"enhanced.dcm frame {k + 1}" for k in order]
    for got, k in zip(read.slices, order):  # HU from the shared functional groups' rescale
        assert (got == images.lung_window(hounsfield[k])).all()


def test_an_enhanced_ct_as_one_image_shows_its_middle_frame():
    hounsfield = volume()
    image = images.load_image(dicom_bytes(enhanced_ct_dataset(hounsfield, range(5))), "enhanced.dcm")
    assert (image[:, :, 0] == images.lung_window(hounsfield[2])).all()


def test_an_enhanced_ct_over_the_limits_is_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(images, "decode_image", lambda *a, **k: pytest.fail("decoded before the limits"))
    content = dicom_bytes(enhanced_ct_dataset(volume(), range(5)))
    monkeypatch.setattr(scans, "MAX_SLICES", 4)
    with pytest.raises(ImageReadError, match=r"^big\.dcm: 5 frames, more than the 4 slices a scan may have"):
        scans.read_files([("big.dcm", content)], "study")
    monkeypatch.setattr(scans, "MAX_SLICES", 10)
    monkeypatch.setattr(scans, "MAX_VOXELS", 4 * 48 * 48)
    with pytest.raises(ImageReadError, match=r"^study: 5 slices of 0 M pixels in all, more than"):
        scans.read_files([("big.dcm", content)], "study")


def test_an_enhanced_ct_without_positions_keeps_its_frame_order():
    ds = enhanced_ct_dataset(volume(3), [0, 1, 2])
    del ds.PerFrameFunctionalGroupsSequence
    read = scans.read_files([("e.dcm", dicom_bytes(ds))], "study")
    assert read.slice_names == ["e.dcm frame 1", "e.dcm frame 2", "e.dcm frame 3"]
    assert read.notes == ["no slice position: slices ordered by frame number"]
