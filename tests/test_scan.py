"""Whole scans (core.data.scans, core.inference.scan_decision, predict-scan): DICOM series, zips,
NIfTI volumes and folders built from a few real COVID-CT slices; every
refusal named; the aggregation and the scan threshold chosen on validation
patients; the command line's lines and CSV."""
import gzip
import io
import random
import zipfile

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from dicom_factory import ct_dataset, dicom_bytes
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000MCLossless, RLELossless

from core.cli import common
from core.cli import main
from core.data import images
from core.base import files
from core.data import scans
from core.evaluation import patient_level
from core.inference import scan_decision
from core.data.limits import ImageReadError

SIDE = 96  # px: small slices, large enough for the lung mask


@pytest.fixture(scope="module")
def grey_slices(data_dir) -> list[np.ndarray]:
    """Five real COVID-CT slices, grey, SIDE x SIDE."""
    paths = sorted((data_dir / "COVID").glob("*.png"))[:5]
    return [np.asarray(Image.fromarray(images.load_image(p)).convert("L").resize((SIDE, SIDE))) for p in paths]


def hounsfield(grey: np.ndarray) -> np.ndarray:
    """The HU that the lung window (W1500 / L-600) shows as these grey levels."""
    return np.round(grey.astype(float) / 255 * 1500 - 1350).astype(np.int16)


def dicom_slice(grey, z=None, number=None, series="1.2.3.4", transfer_syntax=None) -> bytes:
    ds = ct_dataset(hounsfield(grey))
    ds.SeriesInstanceUID = series
    if z is not None:
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, z], [1, 0, 0, 0, 1, 0]
    if number is not None:
        ds.InstanceNumber = number
    if transfer_syntax is not None:
        ds.compress(transfer_syntax)
    return dicom_bytes(ds)


def series(slices, spacing=2.5, skip=(), **options) -> list[tuple[str, bytes]]:
    """(name, bytes) per slice, named so that name order is not slice order, shuffled."""
    files = [(f"im{(7 * k) % 11:02d}.dcm", dicom_slice(grey, z=-100 + k * spacing, number=k + 1, **options))
             for k, grey in enumerate(slices) if k not in skip]
    random.Random(0).shuffle(files)
    return files


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return np.abs(a.astype(int) - b.astype(int)).max() <= 1  # HU rounding


def zip_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members:
            archive.writestr(name, content)
    return buffer.getvalue()


# ---------------------------------------------------------------------------
# DICOM series
# ---------------------------------------------------------------------------

def test_shuffled_series_is_sorted_back_along_the_body_axis(grey_slices):
    read = scans.read_files(series(grey_slices), "study")
    assert read.kind == "DICOM series" and len(read.slices) == 5
    assert all(same(got, want) for got, want in zip(read.slices, grey_slices))
    assert read.positions == [-100, -97.5, -95, -92.5, -90] and read.notes == []


def test_series_without_positions_is_sorted_by_instance_number(grey_slices):
    files = [(f"x{k}.dcm", dicom_slice(grey, number=5 - k)) for k, grey in enumerate(grey_slices)]
    read = scans.read_files(files, "study")
    assert all(same(got, want) for got, want in zip(read.slices, grey_slices[::-1]))
    assert read.positions is None and "ordered by InstanceNumber" in read.notes[0]


def test_a_missing_slice_is_noted_not_refused(grey_slices):
    read = scans.read_files(series(grey_slices, skip=(2,)), "study")
    assert len(read.slices) == 4
    gap = [note for note in read.notes if note.startswith("missing slices")]
    assert len(gap) == 1 and "5.0 mm (about 1 slices at 2.5 mm)" in gap[0]
    assert read.slice_names[1] in gap[0] and read.slice_names[2] in gap[0]


def test_mixed_series_are_refused_naming_their_files(grey_slices):
    files = series(grey_slices[:3]) + [("other.dcm", dicom_slice(grey_slices[3], z=0, series="9.9.9"))]
    with pytest.raises(ImageReadError, match=r"study: files of 2 different series .*other\.dcm"):
        scans.read_files(files, "study")


def test_dicom_mixed_with_images_is_refused(grey_slices):
    png = io.BytesIO()
    Image.fromarray(grey_slices[0]).save(png, format="PNG")
    with pytest.raises(ImageReadError, match=r"DICOM files \(a\.dcm\) mixed with other images \(b\.png\)"):
        scans.read_files([("a.dcm", dicom_slice(grey_slices[0], z=0)), ("b.png", png.getvalue())], "study")


def test_compressed_series_is_decoded_and_an_undecodable_one_refused(grey_slices):
    read = scans.read_files(series(grey_slices[:2], transfer_syntax=RLELossless), "rle")
    assert all(same(got, want) for got, want in zip(read.slices, grey_slices[:2]))

    # JPEG 2000 multi-component: no pydicom decoder exists for it (docs/dicom.md)
    ds = ct_dataset(shape=(SIDE, SIDE), transfer_syntax=JPEG2000MCLossless)
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.add_new("PixelData", "OB", encapsulate([b"\xff\x4f\xff\x51" + bytes(60)]))
    files = series(grey_slices[:2]) + [("mc.dcm", dicom_bytes(ds))]
    with pytest.raises(ImageReadError, match=r"mc\.dcm: unsupported DICOM transfer syntax 'JPEG 2000 Part 2 "
                                             r"Multi-component Image Compression \(Lossless Only\)'.*export the series "
                                             r"uncompressed"):
        scans.read_files(files, "study")


def test_slice_and_size_limits_refuse_before_decoding(grey_slices, monkeypatch):
    def no_decoding(*args):
        raise AssertionError("decoded before the limits were checked")

    monkeypatch.setattr(images, "decode_image", no_decoding)
    monkeypatch.setattr(scans, "MAX_SLICES", 4)
    with pytest.raises(ImageReadError, match=r"study: 5 files, more than the 4 slices"):
        scans.read_files(series(grey_slices), "study")
    monkeypatch.setattr(scans, "MAX_VOXELS", 3 * SIDE * SIDE)
    with pytest.raises(ImageReadError, match=r"study: 4 slices of 0 M pixels in all, more than"):
        scans.read_files(series(grey_slices[:4]), "study")


# ---------------------------------------------------------------------------
# Zip and folders
# ---------------------------------------------------------------------------

def test_zip_of_a_series_reads_like_its_files(grey_slices):
    members = [(f"study/{name}", content) for name, content in series(grey_slices)]
    read = scans.read_files([("study.zip", zip_bytes(members + [("__MACOSX/._im00.dcm", b"junk")]))], "upload")
    assert read.kind == "DICOM series" and all(same(got, want) for got, want in zip(read.slices, grey_slices))
    assert read.slice_names[0].startswith("study.zip/study/im")


@pytest.mark.parametrize("member", ["../evil.dcm", "/etc/evil.dcm", "a/../../evil.dcm"])
def test_zip_members_outside_the_archive_are_refused(grey_slices, member):
    with pytest.raises(ImageReadError, match=r"bad\.zip: member .* points outside the archive"):
        scans.read_zip(zip_bytes([(member, dicom_slice(grey_slices[0], z=0))]), "bad.zip")


def test_zip_sizes_are_checked_from_its_directory_before_inflating(monkeypatch):
    bomb = zip_bytes([("zeros.dcm", bytes(200_000))])  # 200 kB of zeros: about 200 bytes compressed
    monkeypatch.setattr(scans, "MAX_SCAN_BYTES", 100_000)
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda *args, **kwargs: pytest.fail("inflated a member"))
    with pytest.raises(ImageReadError, match=r"bomb\.zip: 0 MB of files, more than the 0 MB"):
        scans.read_zip(bomb, "bomb.zip")


def test_unreadable_zip_member_is_named(grey_slices):
    content = zip_bytes([("a.dcm", dicom_slice(grey_slices[0], z=0)), ("notes.dcm", b"my notes")])
    with pytest.raises(ImageReadError, match=r"s\.zip/notes\.dcm: not a readable image"):
        scans.read_zip(content, "s.zip")


def test_folder_of_slice_images_is_read_in_natural_name_order(grey_slices, tmp_path):
    for number, grey in zip((1, 2, 10), grey_slices):
        Image.fromarray(grey).save(tmp_path / f"slice{number}.png")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0")
    read = scans.read_path(tmp_path)
    assert read.kind == "slice images" and read.slice_names == ["slice1.png", "slice2.png", "slice10.png"]
    assert all((got == np.repeat(want[:, :, None], 3, axis=2)).all()
               for got, want in zip(read.slices, grey_slices))


# ---------------------------------------------------------------------------
# NIfTI
# ---------------------------------------------------------------------------

def axial_volume(slices) -> np.ndarray:
    """x (towards the patient's right), y (towards anterior), z (feet to head) in HU, for a RAS affine."""
    return np.stack([hounsfield(grey)[::-1, ::-1].T for grey in slices], axis=2)


def test_axial_nifti_reads_as_its_slices(grey_slices):
    volume = nib.Nifti1Image(axial_volume(grey_slices), np.diag([0.7, 0.7, 2.0, 1]))
    read = scans.read_nifti(gzip.compress(volume.to_bytes()), "ct.nii.gz")
    assert read.kind == "NIfTI volume" and read.positions == [0, 2, 4, 6, 8] and read.notes == []
    assert all(same(got, want) for got, want in zip(read.slices, grey_slices))


def test_scaled_nifti_values_are_hounsfield_units(grey_slices):
    stored = (axial_volume(grey_slices[:2]) + 1024).astype(np.uint16)
    volume = nib.Nifti1Image(stored, np.eye(4))
    volume.header.set_slope_inter(1, -1024)
    read = scans.read_nifti(volume.to_bytes(), "scaled.nii")
    assert all(same(got, want) for got, want in zip(read.slices, grey_slices[:2]))


def test_coronal_volume_with_flipped_axes_is_reoriented_to_axial(grey_slices):
    axial = axial_volume(grey_slices)
    # Array axes: z (running head to feet), x (towards the left), y (towards anterior); the affine says so.
    stored = np.transpose(axial, (2, 0, 1))[::-1, ::-1, :]
    affine = np.array([[0, -1, 0, 0], [0, 0, 1, 0], [-2.0, 0, 0, 0], [0, 0, 0, 1]])
    read = scans.read_nifti(nib.Nifti1Image(np.ascontiguousarray(stored), affine).to_bytes(), "coronal.nii")
    assert len(read.slices) == 5 and "reoriented to axial" in read.notes[0]
    assert all(same(got, want) for got, want in zip(read.slices, grey_slices))


def test_thick_rows_are_made_square():
    volume = nib.Nifti1Image(np.full((40, 20, 3), -1000, np.int16), np.diag([1.0, 3.0, 1.0, 1]))
    assert scans.read_nifti(volume.to_bytes(), "v.nii").slices[0].shape == (60, 40)


def test_nifti_limits_come_from_the_header_alone(monkeypatch):
    header = nib.Nifti1Header()
    header.set_data_shape((512, 512, 2000))
    header.set_data_dtype(np.int16)
    content = header.binaryblock + bytes(4)  # 2 GB of voxels announced, none there
    with pytest.raises(ImageReadError, match=r"huge\.nii: NIfTI volume 512 x 512 x 2000 has 2000 axial slices"):
        scans.read_nifti(content, "huge.nii")
    header.set_data_shape((1024, 1024, 300))
    with pytest.raises(ImageReadError, match=r"wide\.nii: .* = 315 M voxels, more than the 262 M"):
        scans.read_nifti(header.binaryblock + bytes(4), "wide.nii")


def test_bad_nifti_files_are_named():
    with pytest.raises(ImageReadError, match=r"t\.nii: NIfTI volume of shape \(4, 4, 4, 2\)"):
        scans.read_nifti(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.int16), np.eye(4)).to_bytes(), "t.nii")
    whole = nib.Nifti1Image(np.zeros((40, 40, 4), np.int16), np.eye(4)).to_bytes()
    with pytest.raises(ImageReadError, match=r"cut\.nii: NIfTI file truncated"):
        scans.read_nifti(whole[:-100], "cut.nii")
    with pytest.raises(ImageReadError, match=r"thin\.nii: NIfTI volume 8 x 40 x 40: its axial slices are under 16"):
        scans.read_nifti(nib.Nifti1Image(np.zeros((8, 40, 40), np.int16), np.eye(4)).to_bytes(), "thin.nii")
    with pytest.raises(ImageReadError, match=r"x\.nii: not a NIfTI volume"):
        scans.read_nifti(b"hello" * 200, "x.nii")


def test_nifti_in_a_zip(grey_slices):
    volume = nib.Nifti1Image(axial_volume(grey_slices[:2]), np.eye(4)).to_bytes()
    read = scans.read_files([("s.zip", zip_bytes([("ct.nii", volume)]))], "s")
    assert read.kind == "NIfTI volume" and len(read.slices) == 2


# ---------------------------------------------------------------------------
# Slices to score, aggregation, the scan threshold
# ---------------------------------------------------------------------------

def test_aggregations():
    p = [0.1, 0.9, 0.2, 0.8, 0.5]
    assert patient_level.aggregate(p, "mean") == pytest.approx(0.5)
    assert patient_level.aggregate(p, "top3") == pytest.approx((0.9 + 0.8 + 0.5) / 3)
    assert patient_level.aggregate(p, "noisy_or") == pytest.approx(1 - 0.9 * 0.1 * 0.8 * 0.2 * 0.5)
    assert patient_level.aggregate([0.3], "top3") == pytest.approx(0.3)
    with pytest.raises(ValueError, match="unknown aggregation 'max'"):
        patient_level.aggregate(p, "max")


def test_only_slices_that_show_lung_are_scored(grey_slices):
    fractions = [scan_decision.lung_fraction(np.repeat(g[:, :, None], 3, axis=2)) for g in grey_slices]
    fractions.append(scan_decision.lung_fraction(np.zeros((SIDE, SIDE, 3), np.uint8)))  # below the lungs: no air
    assert min(fractions[:5]) >= scan_decision.MIN_LUNG_AREA and fractions[5] == 0
    assert scan_decision.slices_to_score(fractions) == ([0, 1, 2, 3, 4], [])
    chosen, notes = scan_decision.slices_to_score([0.0, 0.01])
    assert chosen == [0, 1] and "every slice was scored" in notes[0]


def test_a_thin_slice_scan_is_scored_one_slice_per_spacing():
    positions = [0, 1.25, 2.5, 3.75, 5.0, 6.25, 7.5, 8.75, 10.0, 11.25]
    fractions = [0.0] + [0.2] * 9  # the first slice is below the lungs
    chosen, notes = scan_decision.slices_to_score(fractions, positions)
    assert chosen == [1, 5, 9] and notes == ["6 lung slices within 5 mm of a scored one were not scored"]
    assert scan_decision.slices_to_score(fractions, [5.0 * k for k in range(10)])[0] == list(range(1, 10))


def patients_frame(seed=0) -> pd.DataFrame:
    """Validation and test patients of 3 slices: a positive patient has one
    clearly positive slice among low ones, so the top-3 mean separates them
    better than the mean would only where slices differ; test is reversed."""
    rng = np.random.default_rng(seed)
    rows = []
    for split in ("val", "test"):
        for patient in range(20):
            y = patient % 2
            probs = rng.uniform(0.1, 0.4, 3) if not y else np.r_[rng.uniform(0.6, 0.95), rng.uniform(0.0, 0.2, 2)]
            if split == "test":
                y = 1 - y  # scored, never chosen on
            rows += [{"path": f"{split}{patient}_{k}", "y_true": y, "prob": p, "split": split,
                      "patient_id": f"{split}{patient}"} for k, p in enumerate(probs)]
    return pd.DataFrame(rows)


def test_aggregation_and_threshold_are_chosen_on_validation_patients():
    frame = patients_frame()
    settings = scan_decision.choose_settings(frame, n_boot=50)
    val = pd.DataFrame(settings["comparison"]).query("split == 'val'").set_index("method")
    assert settings["aggregation"] == val["roc_auc"].idxmax() != "mean"
    assert settings["val_patients"] == 20 and settings["val_multi_slice_patients"] == 20
    patients = patient_level.per_patient(frame[frame.split == "val"], settings["aggregation"])
    positives, negatives = patients.query("y_true == 1").prob, patients.query("y_true == 0").prob
    assert negatives.max() < settings["threshold"] <= positives.min()
    assert settings["test_patients"]["n"] == 20  # reported on test, at the validation threshold
    shuffled_test = frame.assign(y_true=np.where(frame.split == "test", 1 - frame.y_true, frame.y_true))
    again = scan_decision.choose_settings(shuffled_test, n_boot=50)
    assert (again["aggregation"], again["threshold"]) == (settings["aggregation"], settings["threshold"])


def test_run_settings_are_stored_and_fall_back_with_a_caveat(trained_run, monkeypatch):
    (trained_run / scan_decision.SCAN_FILE).unlink(missing_ok=True)
    settings = scan_decision.settings_for_run(trained_run, n_boot=20)
    assert settings["chosen_on"] == "validation patients" and settings["caveat"] is None
    assert files.read_json(trained_run / scan_decision.SCAN_FILE)["threshold"] == settings["threshold"]
    monkeypatch.setattr(scan_decision, "choose_settings", lambda *a, **k: pytest.fail("chosen again"))
    assert scan_decision.settings_for_run(trained_run) == settings  # stored: not chosen again

    monkeypatch.setattr(scan_decision, "patient_frame", lambda run_dir: (_ for _ in ()).throw(ValueError("moved")))
    (trained_run / scan_decision.SCAN_FILE).unlink()
    fallback = scan_decision.settings_for_run(trained_run)
    assert fallback["chosen_on"] == "none" and "moved" in fallback["caveat"] and "slice threshold" in fallback["caveat"]
    assert not (trained_run / scan_decision.SCAN_FILE).exists()  # tried again next time


# ---------------------------------------------------------------------------
# Scoring a scan, and the command line
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def predictor(trained_run):
    from core.inference.predict import Predictor

    return Predictor.from_run(trained_run)


def test_scan_probability_aggregates_the_lung_slices_scored_in_batches(grey_slices, predictor, trained_run,
                                                                      monkeypatch):
    monkeypatch.setattr(scan_decision, "BATCH_SIZE", 2)
    blank = np.full((SIDE, SIDE), 0, np.uint8)
    read = scans.Scan("s", [blank] + list(grey_slices), [f"s{k}" for k in range(6)], "DICOM series")
    settings = scan_decision.fallback_settings(trained_run, "test")
    calls = []
    result = scan_decision.score_scan(predictor, read, settings, progress=lambda done, total: calls.append(done))
    assert result.scored == [1, 2, 3, 4, 5] and calls == [2, 4, 5]
    single = predictor.predict_images([read.rgb(i) for i in result.scored], ["x"] * 5)
    assert [result.probability[i] for i in result.scored] == pytest.approx([p.probability for p in single],
                                                                          abs=1e-5)
    assert result.scan_probability == pytest.approx(np.mean([p.probability for p in single]), abs=1e-5)
    assert result.most_suspicious == 1 + int(np.argmax([p.probability for p in single]))
    expected = "COVID" if result.scan_probability >= settings["threshold"] else "NonCOVID"
    assert result.decision == expected


def test_predict_scan_prints_one_line_per_scan_and_writes_csv(grey_slices, trained_run, tmp_path, capsys):
    folder = tmp_path / "series"
    folder.mkdir()
    for name, content in series(grey_slices[:3], spacing=5.0):
        (folder / name).write_bytes(content)
    volume = tmp_path / "ct.nii.gz"
    volume.write_bytes(gzip.compress(nib.Nifti1Image(axial_volume(grey_slices), np.diag([1, 1, 5.0, 1])).to_bytes()))
    (tmp_path / "notes.zip").write_bytes(b"PK\x03\x04 not really")
    out = tmp_path / "scans.csv"
    code = main.main(["predict-scan", str(folder), str(volume), str(tmp_path / "notes.zip"),
                     "--run", str(trained_run), "--csv", str(out)])
    printed = capsys.readouterr()
    assert code == common.EXIT_BAD_INPUT and "error: notes.zip: not a readable zip file" in printed.err
    lines = printed.out.strip().splitlines()
    assert [line.split("\t")[:2] for line in lines] == [["series", "3 slices read, 3 scored"],
                                                        ["ct.nii.gz", "5 slices read, 5 scored"]]
    table = pd.read_csv(out)
    assert list(table["scan"]) == ["series", "ct.nii.gz"] and list(table["slices_read"]) == [3, 5]
    for line, row in zip(lines, table.itertuples()):
        assert line.split("\t")[2:4] == [f"{row.probability:.4f}", row.decision]
        assert f"most suspicious: {row.most_suspicious} " in line


def test_a_scan_near_its_threshold_is_borderline_as_a_slice_is():
    rng = np.random.default_rng(0)
    patients = [f"p{i}" for i in range(40)]
    frame = pd.DataFrame({"patient_id": np.repeat(patients, 3), "y_true": np.repeat([i % 2 for i in range(40)], 3),
                          "split": "val"})
    frame["prob"] = np.clip(0.3 + 0.4 * frame["y_true"] + rng.normal(0, 0.2, len(frame)), 0, 1)
    settings = scan_decision.choose_settings(frame, n_boot=20)
    low, high = settings["borderline"]
    assert low <= settings["threshold"] <= high and low < high

    def result(probability):
        scan = scans.Scan(name="s", slices=[np.zeros((4, 4), np.uint8)], slice_names=["a"], kind="slice images")
        return scan_decision.ScanResult(scan, [0.5], [0], {0: probability}, {0: []}, settings, "COVID", "NonCOVID")

    assert result(settings["threshold"]).borderline
    assert not result(1.0).borderline and not result(0.0).borderline
    assert not scan_decision.ScanResult(result(0.5).scan, [0.5], [0], {0: 0.5}, {0: []},
                                        {**settings, "borderline": None}, "COVID", "NonCOVID").borderline
