"""DICOM studies (core.data.dicom_study, `python -m core series`, predict-scan
--series): a study of several series listed from headers alone, the axial
lung series preselected, another chosen by number or UID, a DICOMDIR compared
with the files, the header summary without patient identifiers unless asked,
the bounds and refusals; and predict-scan on the real JPEG-Lossless series
with a deployed tiny run."""
import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dicom_factory import ct_dataset, dicom_bytes, enhanced_ct_dataset

from core.cli import main as cli
from core.cli.common import EXIT_BAD_INPUT
from core.data import dicom, dicom_header, dicom_study, images, limits, scans
from core.data.limits import ImageReadError

AXIAL, CORONAL = [1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, -1]
SHARED_P002 = Path(__file__).resolve().parents[2] / "shared/data/external/COVID-CT-MD-dicom/COVID/P002"
# (folder, series number, description, kernel, thickness, orientation, image type, HU, slices)
SERIES = [
    ("S1", 1, "Topogram 0.6 T20f", "T20f", 0.6, CORONAL, ["ORIGINAL", "PRIMARY", "LOCALIZER"], 0, 1),
    ("S2", 2, "Thorax 5.0 B30f", "B30f", 5.0, AXIAL, ["ORIGINAL", "PRIMARY", "AXIAL"], 40, 12),
    ("S3", 3, "Lung 1.0 B70f", "B70f", 1.0, AXIAL, ["ORIGINAL", "PRIMARY", "AXIAL"], -700, 12),
    ("S4", 4, "Cor 3.0 B70f", "B70f", 3.0, CORONAL, ["DERIVED", "SECONDARY", "MPR"], -650, 12),
]
IDENTIFYING = ("Doe^Jane", "ID-12345", "19600101", "ACC-777")


def study_slice(series_number, description, kernel, thickness, orientation, image_type, hu, k,
                shape=(32, 32)) -> bytes:
    ds = ct_dataset(np.full(shape, hu, np.int16))
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.AccessionNumber = IDENTIFYING
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyDescription = "1.2.826.0.1.99", "20200315", "CT THORAX"
    ds.StudyTime, ds.StudyID = "101500", "1"  # a DICOMDIR's study record needs them
    ds.Manufacturer, ds.ManufacturerModelName = "SIEMENS", "SOMATOM Force"
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = f"1.2.826.0.1.99.{series_number}", \
        series_number, description
    ds.ConvolutionKernel, ds.SliceThickness, ds.ImageType = kernel, thickness, image_type
    ds.ImageOrientationPatient, ds.ImagePositionPatient = orientation, [0, 0, -100 + thickness * k]
    ds.PixelSpacing, ds.InstanceNumber = [0.7, 0.7], k + 1
    return dicom_bytes(ds)


def study_files(series=SERIES) -> dict[str, bytes]:
    """A PACS-like export: one folder per series, files without extension, and a README."""
    files = {"README.txt": b"exported by the PACS\n"}
    for folder, *header, count in series:
        for k in range(count):
            files[f"{folder}/I{(5 * k) % count:04d}"] = study_slice(*header, k)
    return files


def write(folder: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder


def zipped(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return path


@pytest.fixture
def study_dir(tmp_path) -> Path:
    return write(tmp_path / "study", study_files())


def test_a_study_lists_its_series_from_headers_alone(study_dir, monkeypatch):
    monkeypatch.setattr(images, "decode_image", lambda *a, **k: pytest.fail("decoded a pixel to list"))
    monkeypatch.setattr(images, "open_image", lambda *a, **k: pytest.fail("read a whole file to list"))
    study = dicom_study.open_study(study_dir)
    listed = [(s.index, s.number, s.description, s.kernel, s.thickness, s.orientation, s.image_type, s.images)
              for s in study.series]
    assert listed == [(1, 1, "Topogram 0.6 T20f", "T20f", 0.6, "coronal", "ORIGINAL/PRIMARY/LOCALIZER", 1),
                      (2, 2, "Thorax 5.0 B30f", "B30f", 5.0, "axial", "ORIGINAL/PRIMARY/AXIAL", 12),
                      (3, 3, "Lung 1.0 B70f", "B70f", 1.0, "axial", "ORIGINAL/PRIMARY/AXIAL", 12),
                      (4, 4, "Cor 3.0 B70f", "B70f", 3.0, "coronal", "DERIVED/SECONDARY/MPR", 12)]
    assert study.series[0].is_localizer and not study.series[2].is_localizer
    assert study.notes == ["1 files that are not DICOM images left out (README.txt)"]


def test_the_thin_axial_lung_kernel_series_is_preselected(study_dir):
    assert dicom_study.open_study(study_dir).preselected.description == "Lung 1.0 B70f"
    without_lung = write(study_dir.parent / "soft", study_files([SERIES[0], SERIES[1], SERIES[3]]))
    assert dicom_study.open_study(without_lung).preselected.description == "Thorax 5.0 B30f"
    # Between two lung kernels the thinner wins; a lung kernel beats a thinner soft one.
    thick_lung = ("S5", 5, "Lung 3.0 B70f", "B70f", 3.0, AXIAL, ["ORIGINAL", "PRIMARY", "AXIAL"], -700, 12)
    thin_soft = ("S6", 6, "Thorax 0.6 B30f", "B30f", 0.6, AXIAL, ["ORIGINAL", "PRIMARY", "AXIAL"], 40, 12)
    both = write(study_dir.parent / "both", study_files([thick_lung, thin_soft, SERIES[2]]))
    assert dicom_study.open_study(both).preselected.description == "Lung 1.0 B70f"
    assert dicom_study.open_study(write(study_dir.parent / "two", study_files([thick_lung, thin_soft]))
                                  ).preselected.description == "Lung 3.0 B70f"


@pytest.mark.parametrize("kernel, lung", [("B70f", True), ("Br64d/3", True), ("LUNG", True), ("FC52", True),
                                          ("YC", True), ("B30f", False), ("STANDARD", False), ("FC13", False),
                                          ("Qr40", False), ("B", False)])
def test_lung_kernels_by_vendor(kernel, lung):
    assert dicom_study.is_lung_kernel(kernel) is lung


def test_only_localizers_and_reformats_are_not_guessed(tmp_path):
    study = dicom_study.open_study(write(tmp_path / "s", study_files([SERIES[0], SERIES[3]])))
    assert study.preselected is None
    with pytest.raises(ImageReadError, match=r"^s: none of its 2 series is an axial CT series to preselect "
                                             r".*choose one by its number or UID"):
        dicom_study.read_scan(tmp_path / "s")
    read, _, chosen = dicom_study.read_scan(tmp_path / "s", series=2)
    assert chosen.description == "Cor 3.0 B70f" and len(read.slices) == 12


def test_the_preselected_series_is_read_as_the_scan(study_dir):
    read, study, chosen = dicom_study.read_scan(study_dir)
    assert chosen is study.preselected and read.kind == "DICOM series" and len(read.slices) == 12
    assert all((s == images.lung_window(-700)).all() for s in read.slices)  # the lung series' HU
    assert read.slice_names == [f"S3/I{(5 * k) % 12:04d}" for k in range(12)]  # body-axis order, not names
    assert read.notes[0] == 'series 3 of 4 (preselected): "Lung 1.0 B70f", kernel "B70f", 1 mm, axial, 12 images'
    assert "README.txt" in read.notes[1]


def test_another_series_is_chosen_by_number_or_uid(study_dir):
    by_number, _, chosen = dicom_study.read_scan(study_dir, series="2")
    assert chosen.description == "Thorax 5.0 B30f" and (by_number.slices[0] == images.lung_window(40)).all()
    assert by_number.notes[0].startswith("series 2 of 4 (chosen)")
    by_uid, _, chosen = dicom_study.read_scan(study_dir, series="1.2.826.0.1.99.2")
    assert chosen.index == 2 and by_uid.slice_names == by_number.slice_names
    with pytest.raises(ImageReadError, match=r"^study: no series '7': give a number from 1 to 4 or one"):
        dicom_study.read_scan(study_dir, series=7)


def test_a_zipped_study_reads_as_its_folder(study_dir, tmp_path):
    archive = zipped(tmp_path / "study.zip", study_files())
    study = dicom_study.open_study(archive)
    assert [s.description for s in study.series] == [s.description for s in dicom_study.open_study(study_dir).series]
    read, _, _ = dicom_study.read_scan(archive, series=3)
    assert read.slice_names[0].startswith("study.zip/S3/I") and len(read.slices) == 12


def test_the_summary_leaves_patient_identifiers_out_unless_asked(study_dir):
    chosen = dicom_study.open_study(study_dir).preselected
    summary = dicom_header.header_summary(chosen)
    assert summary == {"study_date": "2020-03-15", "study_description": "CT THORAX", "series": 3,
                       "series_description": "Lung 1.0 B70f", "modality": "CT", "kernel": "B70f",
                       "slice_thickness_mm": 1.0, "slice_spacing_mm": 1.0, "pixel_spacing_mm": [0.7, 0.7],
                       "images": 12, "image_size": "32x32", "manufacturer": "SIEMENS", "model": "SOMATOM Force"}
    assert not any(value in str(summary) for value in IDENTIFYING + ("1.2.826.0.1.99",))
    with_identifiers = dicom_header.header_summary(chosen, with_identifiers=True)
    assert (with_identifiers["patient_name"], with_identifiers["patient_id"], with_identifiers["patient_birth_date"],
            with_identifiers["accession_number"]) == IDENTIFYING


def test_an_enhanced_ct_in_a_study_is_one_series(tmp_path):
    hounsfield = np.full((12, 32, 32), -700, np.int16)
    enhanced = enhanced_ct_dataset(hounsfield, [2.0 * k for k in range(12)], kernel="Br64d", thickness=2.0)
    enhanced.SeriesInstanceUID, enhanced.SeriesNumber = "1.2.826.0.1.5", 5
    files = {**study_files([SERIES[0]]), "S5/enhanced": dicom_bytes(enhanced)}
    study = dicom_study.open_study(write(tmp_path / "s", files))
    chosen = study.preselected
    assert (chosen.kernel, chosen.thickness, chosen.orientation, chosen.images) == ("Br64d", 2.0, "axial", 12)
    assert dicom_header.header_summary(chosen)["slice_spacing_mm"] == 2.0
    read, _, _ = dicom_study.read_scan(tmp_path / "s")
    assert len(read.slices) == 12 and read.slice_names[0] == "S5/enhanced frame 1"


def dicomdir_study(folder: Path, series=SERIES) -> Path:
    """The study written as a PACS writes a CD: pydicom's FileSet, its files
    under DICOM/ with eight-character names, indexed by a DICOMDIR."""
    from pydicom import dcmread
    from pydicom.fileset import FileSet

    file_set = FileSet()
    for name, content in study_files(series).items():
        if name != "README.txt":
            file_set.add(dcmread(io.BytesIO(content)))
    file_set.write(folder)
    return folder


def test_a_study_with_a_dicomdir_lists_the_same_series_zipped_or_not(tmp_path):
    folder = dicomdir_study(tmp_path / "cd")
    assert (folder / "DICOMDIR").is_file()
    expected = [(s.description, s.images) for s in dicom_study.open_study(write(tmp_path / "plain", study_files())).series]
    study = dicom_study.open_study(folder)
    assert [(s.description, s.images) for s in study.series] == expected and study.notes == []
    archive = zipped(tmp_path / "cd.zip", {p.relative_to(folder).as_posix(): p.read_bytes()
                                           for p in folder.rglob("*") if p.is_file()})
    zipped_study = dicom_study.open_study(archive)
    assert [(s.description, s.images) for s in zipped_study.series] == expected and zipped_study.notes == []
    assert zipped_study.preselected.description == "Lung 1.0 B70f"


def test_a_dicomdir_naming_files_that_are_missing_is_said(tmp_path, monkeypatch):
    folder = dicomdir_study(tmp_path / "cd")
    lung_files = [p for p in folder.rglob("*") if p.is_file() and p.name != "DICOMDIR"
                  and "Lung" in str(dicom.dicom_header(p.read_bytes(), p.name).SeriesDescription)]
    for path in lung_files[:2]:
        path.unlink()
    notes = dicom_study.open_study(folder).notes
    assert notes == ["DICOMDIR: series …826.0.1.99.3 has 10 of the 12 images it indexes"]
    for path in lung_files[2:]:
        path.unlink()
    assert dicom_study.open_study(folder).notes == ["DICOMDIR indexes 4 series; 1 of them have no file here"]
    monkeypatch.setattr(limits, "MAX_DICOMDIR_BYTES", 100)  # an index too large to parse is not
    assert dicom_study.open_study(folder).notes == [
        "DICOMDIR: not compared, over 0 MB of index to parse; series listed from the files"]
    monkeypatch.undo()
    (folder / "DICOMDIR").write_bytes(b"\0" * 200)
    assert dicom_study.open_study(folder).notes == [
        "DICOMDIR: not a readable DICOMDIR (AttributeError); series listed from the files"]


# ---------------------------------------------------------------------------
# Bounds and refusals
# ---------------------------------------------------------------------------

def test_a_series_of_mixed_image_sizes_is_refused_naming_the_file(tmp_path):
    files = study_files([SERIES[2]])
    files["S3/I9999"] = study_slice(*SERIES[2][1:8], 12, shape=(48, 32))
    with pytest.raises(ImageReadError, match=r"^S3/I9999: 32x48 px, where series 1 \(S3/I0000\) has 32x32; "
                                             r"a series of mixed image sizes is not one scan"):
        dicom_study.read_scan(write(tmp_path / "s", files))


def test_too_many_series_are_refused(study_dir, monkeypatch):
    monkeypatch.setattr(limits, "MAX_SERIES", 3)
    with pytest.raises(ImageReadError, match=r"^study: more than 3 series, more than a study has; give the series"):
        dicom_study.open_study(study_dir)


def test_a_study_of_a_thousand_series_is_refused_in_plain_words(tmp_path):
    """Real files, no limit patched: MAX_SERIES + 1 one-slice series (a thousand would only take longer)."""
    files = {f"S{k}/I0": study_slice(k, f"series {k}", "B30f", 5.0, AXIAL, ["ORIGINAL", "PRIMARY", "AXIAL"], 0, 0,
                                     shape=(16, 16)) for k in range(1, limits.MAX_SERIES + 2)}
    with pytest.raises(ImageReadError, match=rf"^archive.zip: more than {limits.MAX_SERIES} series, more than a "
                                             "study has; give the series to read"):
        dicom_study.open_study(zipped(tmp_path / "archive.zip", files))


def test_too_many_files_are_refused_before_any_header_is_read(study_dir, monkeypatch):
    monkeypatch.setattr(limits, "MAX_STUDY_FILES", 30)
    monkeypatch.setattr(dicom, "dicom_header", lambda *a: pytest.fail("read a header"))
    with pytest.raises(ImageReadError, match=r"^study: 38 files, more than the 30 a study may hold"):
        dicom_study.open_study(study_dir)


def test_header_reading_is_bounded(study_dir, monkeypatch):
    monkeypatch.setattr(limits, "MAX_STUDY_HEADER_BYTES", 50_000)  # files of ~2.5 kB, read whole
    with pytest.raises(ImageReadError, match=r"^study: over 0 MB of DICOM headers"):
        dicom_study.open_study(study_dir)


def test_a_chosen_series_still_meets_the_scan_limits_before_decoding(study_dir, monkeypatch):
    monkeypatch.setattr(images, "decode_image", lambda *a, **k: pytest.fail("decoded before the limits"))
    monkeypatch.setattr(scans, "MAX_SLICES", 10)
    with pytest.raises(ImageReadError, match=r"^study: 12 files, more than the 10 slices"):
        dicom_study.read_scan(study_dir)


def test_a_folder_without_dicom_is_read_as_slices(tmp_path):
    from PIL import Image

    for k in range(2):
        Image.new("L", (32, 32), 100 + k).save(tmp_path / f"slice{k}.png")
    read, study, chosen = dicom_study.read_scan(tmp_path)
    assert read.kind == "slice images" and study is None and chosen is None
    with pytest.raises(ImageReadError, match=r"holds no DICOM series to choose '2' from"):
        dicom_study.read_scan(tmp_path, series="2")


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def test_series_command_prints_one_line_per_series(study_dir, capsys):
    files = study_files()
    for name in [n for n in files if n.startswith("S2/")]:  # a description with a line break and a tab
        files[name] = study_slice(2, "Thorax\n5.0\tB30f", *SERIES[1][3:8], int(name[-4:]) % 12)
    write(study_dir, files)
    assert cli.main(["series", str(study_dir)]) == 0
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert lines[0] == '# 4 series in "study"; * = preselected for the lungs' and len(lines) == 5
    assert lines[2].split("\t")[:4] == ["2", '"1.2.826.0.1.99.2"', '"Thorax\\n5.0\\tB30f"', 'kernel "B30f"']
    assert lines[3].split("\t") == ["3*", '"1.2.826.0.1.99.3"', '"Lung 1.0 B70f"', 'kernel "B70f"', "1 mm", "axial",
                                    '"ORIGINAL/PRIMARY/AXIAL"', "12 images"]
    assert "note: 1 files that are not DICOM images left out (README.txt)" in printed.err


def test_series_command_refuses_what_is_not_a_study(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("no scan here")
    assert cli.main(["series", str(tmp_path)]) == EXIT_BAD_INPUT
    assert f"error: {tmp_path.name}: no DICOM image in it" in capsys.readouterr().err


def test_predict_scan_reads_the_series_asked_for(study_dir, trained_run, tmp_path, capsys):
    out = tmp_path / "scans.csv"
    code = cli.main(["predict-scan", str(study_dir), "--series", "2", "--run", str(trained_run), "--csv", str(out)])
    line = capsys.readouterr().out.strip()
    assert code == 0 and line.startswith("study\t12 slices read")
    assert line.endswith('\tseries 2/4 "Thorax 5.0 B30f", kernel "B30f"')
    row = pd.read_csv(out).iloc[0]
    assert (row.series, row.kernel, row.slice_thickness_mm, row.study_date, row.scanner) == \
        ("2/4", "B30f", 5.0, "2020-03-15", "SIEMENS SOMATOM Force")
    assert row.notes.startswith("series 2 of 4 (chosen)")


@pytest.fixture
def deployed(trained_artifacts, trained_run):
    """The tiny run deployed despite being a smoke run, its guard's feature
    check off (as tests/test_app.py does): 8 validation scans give no
    meaningful 99th percentile, and this is about the path, not the guard."""
    from core.base import files
    from core.inference import deploy, ood

    summary_file = trained_run / ood.SUMMARY_FILE
    before = summary_file.read_bytes() if summary_file.exists() else None  # the shared run, left as found
    deploy.deploy(trained_run.name, force=True)
    files.write_json(summary_file, {**files.read_json(summary_file), "threshold": float("inf")})
    yield trained_run.name
    if before is None:
        summary_file.unlink(missing_ok=True)
    else:
        summary_file.write_bytes(before)
    deploy.deployed_file().unlink(missing_ok=True)


def test_predict_scan_decides_the_real_jpeg_lossless_series_with_the_deployed_model(deployed, capsys):
    if not SHARED_P002.is_dir():
        pytest.skip(f"COVID-CT-MD DICOM series not found at {SHARED_P002}")
    assert cli.main(["predict-scan", str(SHARED_P002)]) == 0
    fields = capsys.readouterr().out.strip().split("\t")
    assert fields[0] == "P002" and fields[1].startswith("45 slices read, ")
    assert int(fields[1].split(", ")[1].split()[0]) >= 10  # the lung slices are scored
    assert 0 <= float(fields[2]) <= 1 and fields[3] in ("COVID", "NonCOVID")
    assert fields[4].startswith("most suspicious: IM") and fields[5] == 'series 1/1 "", kernel "D40s"'
