"""Whole scans on the Predict page (AppTest, no browser): a DICOM series gets
one scan-level decision, the per-slice curve and a slice scroller starting at
the most suspicious slice with its Grad-CAM; PNG slices stay single slices
unless ticked as one scan; a bad zip is named, the other uploads still work."""
import io
import zipfile

import numpy as np
import pytest
from dicom_factory import dicom_bytes
from PIL import Image
from pydicom import dcmread
from test_app import assert_no_exception, deployed, open_page, run_id, texts  # noqa: F401 (fixtures)
from test_scan import SIDE, dicom_slice, series

from core.inference import scan_decision
from ui import navigation, scans


@pytest.fixture(scope="module")
def slices(data_dir) -> list[np.ndarray]:
    paths = sorted((data_dir / "COVID").glob("*.png"))[:3]
    return [np.asarray(Image.open(p).convert("L").resize((SIDE, SIDE))) for p in paths]


def png(grey: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    return buffer.getvalue()


def scan_metrics(at) -> list[str]:
    return [m.value for m in at.metric if m.label == "Scan probability of COVID"]


def test_a_dicom_series_gets_one_decision_a_curve_and_a_scroller(deployed, slices):  # noqa: F811
    blank = np.zeros((SIDE, SIDE), np.uint8)  # below the lungs: read, not scored
    files = series(slices + [blank], spacing=5.0)
    at = open_page(navigation.PREDICT)
    at.file_uploader(key="uploads").set_value([(name, content, "application/dicom") for name, content in files])
    at.run()
    assert_no_exception(at)
    assert len(scan_metrics(at)) == 1 and not [m for m in at.metric if m.label == "Probability of COVID"]
    assert "DICOM series: 4 slices read, 3 scored" in texts(at.caption)
    decision = next(m.value for m in at.markdown if m.value.startswith("Decision:"))
    assert "at the scan threshold" in decision
    slider = next(s for s in at.slider if s.label == "Slice")
    assert slider.max == 4
    assert len(at.get("plotly_chart")) == 1
    captions = [c for image in at.image for c in image.captions]
    assert any(c.startswith("Grad-CAM: evidence for") for c in captions)
    shown = next(c for c in captions if c.startswith(f"slice {slider.value}:"))
    # The scroller starts at the slice with the highest probability of those scored.
    others = []
    for value in range(1, 4 + 1):
        if value == slider.value:
            continue
        slider.set_value(value).run()
        assert_no_exception(at)
        others.append(next(c for image in at.image for c in image.captions if c.startswith(f"slice {value}:")))
    assert any("not scored" in c for c in others)

    def probability(caption):
        return float(caption.split(", P ")[1].split("%")[0].lstrip("<>"))
    assert all(probability(shown) >= probability(c) for c in others if "not scored" not in c)


def test_png_slices_are_single_unless_ticked_as_one_scan(deployed, slices):  # noqa: F811
    uploads = [(f"s{k}.png", png(grey), "image/png") for k, grey in enumerate(slices[:2])]
    at = open_page(navigation.PREDICT)
    at.file_uploader(key="uploads").set_value(uploads).run()
    assert_no_exception(at)
    assert not scan_metrics(at) and len([m for m in at.metric if m.label == "Probability of COVID"]) == 2
    at.checkbox(key="one_scan").check().run()
    assert_no_exception(at)
    assert len(scan_metrics(at)) == 1 and "slice images: 2 slices read" in texts(at.caption)


def test_a_bad_zip_is_named_and_a_good_slice_still_predicted(deployed, slices):  # noqa: F811
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../etc/evil.dcm", dicom_slice(slices[0], z=0))
    at = open_page(navigation.PREDICT)
    at.file_uploader(key="uploads").set_value([("study.zip", buffer.getvalue(), "application/zip"),
                                               ("one.png", png(slices[1]), "image/png")]).run()
    assert_no_exception(at)
    assert len(at.error) == 1 and "study.zip: member '../../etc/evil.dcm' points outside" in at.error[0].value
    assert len([m for m in at.metric if m.label == "Probability of COVID"]) == 1


def test_a_run_without_scan_settings_says_its_threshold_is_the_slices(deployed, slices, monkeypatch):  # noqa: F811
    monkeypatch.setattr(scan_decision, "choose_settings", lambda *a, **k: (_ for _ in ()).throw(ValueError("none")))
    scans._settings.clear()
    from core.inference import deploy
    (deploy.deployed_run()["path"] / scan_decision.SCAN_FILE).unlink(missing_ok=True)
    at = open_page(navigation.PREDICT)
    at.file_uploader(key="uploads").set_value([(n, c, "application/dicom") for n, c in series(slices[:2])]).run()
    assert_no_exception(at)
    assert "the slice threshold, which was chosen for single slices, not scans" in texts(at.warning)
    scans._settings.clear()


def test_evaluate_shows_test_patients_beside_test_slices(run_id, trained_run):  # noqa: F811
    at = open_page(navigation.EVALUATE)
    assert_no_exception(at)
    table = next(frame.value for frame in at.dataframe if "per patient" in frame.value.columns)
    expected = scan_decision.settings_for_run(trained_run)["test_patients"]
    assert table.loc["ROC-AUC", "per patient"] == pytest.approx(expected["roc_auc"])
    assert table.loc["Sensitivity (recall)", "per patient"] == pytest.approx(expected["recall"])
    assert f"Per patient: the {expected['n']} test patients" in texts(at.caption)


def test_a_crafted_member_name_cannot_inject_markdown(deployed):  # noqa: F811
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("![x](http://example.org/p.png).dcm", b"not a slice")
    at = open_page(navigation.PREDICT)
    at.file_uploader(key="uploads").set_value([("study.zip", buffer.getvalue(), "application/zip")]).run()
    assert_no_exception(at)
    assert len(at.error) == 1 and r"study.zip/\!\[x\]\(http://example.org/p.png\).dcm" in at.error[0].value


def study_slice(grey, series_number: int, description: str, kernel: str, z: float) -> bytes:
    """A slice of one series of a study, with a patient's identifiers in its header."""
    ds = dcmread(io.BytesIO(dicom_slice(grey, z=z, number=int(z) + 1, series=f"1.2.3.4.{series_number}")))
    ds.SeriesNumber, ds.SeriesDescription, ds.ConvolutionKernel = series_number, description, kernel
    ds.SliceThickness, ds.PatientName, ds.StudyDate = 1.0 if kernel == "B70f" else 5.0, "Doe^Jane", "20200315"
    return dicom_bytes(ds)


def test_a_two_series_study_lists_both_and_preselects_the_lung_one(deployed, slices):  # noqa: F811
    uploads = [(f"{kernel}_{k}.dcm", study_slice(grey, number, description, kernel, float(k)), "application/dicom")
               for number, description, kernel in [(1, "Thorax 5.0 B30f", "B30f"), (2, "Lung 1.0 B70f", "B70f")]
               for k, grey in enumerate(slices[:2])]
    at = open_page(navigation.PREDICT)
    at.file_uploader(key="uploads").set_value(uploads).run()
    assert_no_exception(at)
    table = next(frame.value for frame in at.dataframe if "kernel" in frame.value.columns)
    assert list(table["description"]) == ["Thorax 5.0 B30f", "Lung 1.0 B70f"]
    assert list(table["preselected"]) == [False, True]
    choice = next(box for box in at.selectbox if box.label == "Series to read")
    assert choice.value == 2 and len(scan_metrics(at)) == 1
    assert "series 2 of 2 (preselected)" in texts(at.info).replace("\\", "")  # shown Markdown-escaped

    def header(at) -> dict:
        frame = next(frame.value for frame in at.dataframe if "field" in frame.value.columns)
        return dict(zip(frame["field"], frame["value"]))
    assert header(at)["kernel"] == "B70f" and header(at)["study date"] == "2020-03-15"
    assert "Doe^Jane" not in header(at).values() and "patient name" not in header(at)
    next(t for t in at.toggle if t.label == "Show patient identifiers").set_value(True).run()
    assert header(at)["patient name"] == "Doe^Jane"
    choice.set_value(1).run()
    assert_no_exception(at)
    assert "series 1 of 2 (chosen)" in texts(at.info).replace("\\", "") and header(at)["kernel"] == "B30f"
