"""The record of every answer (docs/records.md): the case log survives a new
process, loses nothing to two writers, stores a corrected label, refuses
files it did not write; its labelled cases export as a site's labelled set
the site tools read; the PDF report states the answer; the CLI logs its
predictions."""
import hashlib
import io
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pypdf import PdfReader
from test_app import deployed, run_id  # noqa: F401 (fixtures)

from core.inference import case_export, case_log, report, site_labels

ROOT = Path(__file__).resolve().parent.parent


def values(probability=0.83, decision="COVID", borderline=False, refused=False) -> dict:
    return {"kind": "slice", "run": "smoke-run", "site": None, "calibration": case_log.calibration_words(None),
            "probability": probability, "threshold": 0.5, "decision": decision, "positive_class": "COVID",
            "negative_class": "NonCOVID", "borderline": borderline, "refused": refused, "reasons": [],
            "slices": 1}


def test_the_pdf_report_states_the_answer_the_model_and_the_disclaimer(tmp_path):
    record = case_log.log_case(values(0.734, borderline=True), [("a.png", b"bytes")], "scan-7.png", "app",
                               folder=tmp_path)
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    model = {"run": "smoke-run", "recipe": "input_size=64", "figures": "test split (8 slices): ROC-AUC 0.750",
             "calibration": "platt scaling fitted on the validation split (8 slices); borderline between 40% and 60%"}
    pdf = report.report_pdf(record, model, image, image)
    assert pdf.startswith(b"%PDF")
    text = " ".join(PdfReader(io.BytesIO(pdf)).pages[0].extract_text().split())
    for expected in ("Probability of COVID: 73%", "Decision: COVID (borderline: too close to call)",
                     "Threshold: 50%, the model's own calibration", "Run: smoke-run", "Recipe: input_size=64",
                     "ROC-AUC 0.750", "borderline between 40% and 60%", "scan-7.png", record["sha256"], " ".join(report.DISCLAIMER.split())):
        assert expected in text


def test_the_labelled_png_carries_the_answer_under_the_picture():
    picture = np.zeros((100, 120, 3), dtype=np.uint8)
    labelled = report.labelled_picture(picture, ["Decision: COVID"])
    assert labelled.shape[1] == 480 and labelled.shape[0] > 100  # a band under it, as wide as its text needs
    assert (labelled[:100, :120] == 0).all()  # the picture itself is unchanged


def test_the_log_survives_a_new_process_and_keeps_no_image_unless_asked(tmp_path):
    record = case_log.log_case(values(), [("x.dcm", b"\x00DICM")], "x.dcm", "app", folder=tmp_path)
    assert record["images"] == [] and not (tmp_path / case_log.IMAGES).exists()
    code = ("import json, sys; from core.inference import case_log; "
            f"records, problems = case_log.list_cases({str(tmp_path)!r}); print(json.dumps([records, problems]))")
    answer = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    records, problems = json.loads(answer.stdout)
    assert problems == [] and records == [record]


def test_a_wrong_answer_stores_the_correct_label_and_patient(tmp_path):
    record = case_log.log_case(values(), [("a.png", b"1")], "a.png", "app", folder=tmp_path)
    case_log.set_label(record["case"], "NonCOVID", "P-17", folder=tmp_path)
    stored = case_log.list_cases(tmp_path)[0][0]
    assert (stored["label"], stored["patient"], stored["decision"]) == ("NonCOVID", "P-17", "COVID")
    with pytest.raises(ValueError, match="neither"):
        case_log.set_label(record["case"], "Pneumonia", folder=tmp_path)
    with pytest.raises(ValueError, match="invalid patient id"):
        case_log.set_label(record["case"], "COVID", "../etc", folder=tmp_path)
    with pytest.raises(ValueError, match="not found"):
        case_log.set_label("20260101T000000000000Z-000000000000-000000", "COVID", folder=tmp_path)


def _write_cases(folder: str, writer: int, count: int) -> None:
    for number in range(count):
        record = case_log.log_case(values(), [(f"{writer}-{number}.png", f"{writer}/{number}".encode())],
                                   f"{writer}-{number}.png", "app", folder=folder)
        case_log.set_label(record["case"], "COVID", f"P{writer}", folder=folder)


def test_two_writers_at_once_lose_nothing(tmp_path):
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_cases, args=(str(tmp_path), writer, 25)) for writer in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    records, problems = case_log.list_cases(tmp_path)
    assert problems == [] and len(records) == 50 and len({r["case"] for r in records}) == 50
    assert all(r["label"] == "COVID" for r in records)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no write left half done


def test_hostile_log_files_are_refused_by_rule(tmp_path):
    good = case_log.log_case(values(), [("a.png", b"1")], "a.png", "app", folder=tmp_path)
    name = "20260101T00000000000{}Z-0123456789ab-abcdef.json"
    outside = tmp_path.parent / f"{tmp_path.name}-outside.json"
    outside.write_text(json.dumps({**good, "case": name.format(9)[:-5]}))
    hostile = {
        name.format(1): "{not json",
        name.format(2): " " * (case_log.MAX_CASE_BYTES + 1),
        name.format(3): "[" * 5000 + "]" * 5000,
        name.format(4): json.dumps({**good, "probability": "0.9"}),
        name.format(5): json.dumps({**good, "images": ["../../etc/passwd"]}),
        name.format(6): json.dumps(good),  # a record copied under another case's name
    }
    for file_name, text in hostile.items():
        (tmp_path / file_name).write_text(text)
    (tmp_path / name.format(7)).symlink_to(outside)
    (tmp_path / name.format(8)).symlink_to(tmp_path / f"{good['case']}.json")
    os.mkfifo(tmp_path / name.format(9))
    records, problems = case_log.list_cases(tmp_path)
    assert [r["case"] for r in records] == [good["case"]]
    assert len(problems) == 9
    for problem in problems:
        assert problem.startswith("20260101T00000000000")  # each names its file
    assert any("a link" in p for p in problems) and any("not a regular file" in p for p in problems)
    assert any("too large" in p for p in problems) and any("'probability'" in p for p in problems)


def test_the_export_is_a_site_labelled_set_the_site_tools_read(tmp_path, data_dir):
    log = tmp_path / "cases"
    slices = {"COVID": sorted((data_dir / "COVID").glob("*.png"))[:2],
              "NonCOVID": sorted((data_dir / "NonCOVID").glob("*.jpg"))[:3]}
    for label, paths in slices.items():
        for number, path in enumerate(paths):
            inputs = [(path.name, path.read_bytes())]
            record = case_log.log_case(values(decision="COVID"), inputs, path.name, "cli", kept=inputs, folder=log)
            case_log.set_label(record["case"], label, f"{label}-patient" if number < 2 else None, folder=log)
    unlabelled = case_log.log_case(values(), [("u.png", b"u")], "u.png", "app", kept=[("u.png", b"u")], folder=log)
    no_image = case_log.log_case(values(), [("n.png", b"n")], "n.png", "app", folder=log)
    case_log.set_label(no_image["case"], "COVID", folder=log)
    lines = []
    manifest = case_export.export_cases(tmp_path / "site", folder=log, report=lines.append)
    assert len(manifest) == 5 and unlabelled["case"] not in set(manifest["case"])
    assert any("image was not kept" in line for line in lines)
    index = site_labels.site_index(tmp_path / "site", "NonCOVID", "COVID")
    assert sorted(index["label"]) == ["COVID"] * 2 + ["NonCOVID"] * 3
    assert index["patient_id"].nunique() == 3  # two named patients, and a case that is its own patient
    assert (index.groupby("patient_id")["y"].nunique() == 1).all()
    with pytest.raises(ValueError, match="not an empty folder"):
        case_export.export_cases(tmp_path / "site", folder=log)


def test_the_cli_logs_its_predictions_and_lists_and_exports_them(trained_artifacts, data_dir, tmp_path, capsys):
    from core.cli.main import main

    slices = [str(min((data_dir / cls).glob("*"))) for cls in ("COVID", "NonCOVID")]
    earlier = {r["case"] for r in case_log.list_cases()[0]}  # the tiny run's artifacts are shared by the session
    assert main(["predict", *slices, "--run", "latest", "--keep-images"]) == 0
    records, problems = case_log.list_cases()
    records = [r for r in records if r["case"] not in earlier]
    assert problems == [] and sorted(r["file"] for r in records) == sorted(Path(s).name for s in slices)
    assert all(r["source"] == "cli" and r["images"] and r["run"] for r in records)
    assert {r["sha256"] for r in records} == {hashlib.sha256(Path(s).read_bytes()).hexdigest() for s in slices}
    for record, label in zip(records, ("COVID", "NonCOVID")):
        case_log.set_label(record["case"], label)
    capsys.readouterr()
    assert main(["cases", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(r["case"] in listed for r in records)
    assert main(["cases", "export", str(tmp_path / "site")]) == 0
    index = site_labels.site_index(tmp_path / "site", "NonCOVID", "COVID")
    ours = index[index["relpath"].str.contains("|".join(r["case"] for r in records))]
    assert sorted(ours["label"]) == ["COVID", "NonCOVID"]  # other tests' labelled cases may be there too


def test_predict_stores_a_wrong_answer_and_shows_it_after_a_reload(deployed, data_dir):  # noqa: F811
    from test_app import assert_no_exception, open_page

    from ui import navigation

    scan = min((data_dir / "COVID").glob("*.png"))
    earlier = {r["case"] for r in case_log.list_cases()[0]}
    at = open_page(navigation.PREDICT)
    at.toggle(key="keep_case_images").set_value(True)
    at.file_uploader(key="uploads").set_value([(scan.name, scan.read_bytes(), "image/png")]).run()
    assert_no_exception(at)
    [record] = [r for r in case_log.list_cases()[0] if r["case"] not in earlier]
    assert record["images"] and record["source"] == "app"
    other = "NonCOVID" if record["decision"] == "COVID" else "COVID"
    assert at.radio(key="wrong_label_slice_0").value == other  # the other class, preselected
    at.text_input(key="wrong_patient_slice_0").set_value("P-42")
    next(b for b in at.button if b.label == "Store the correct label").click().run()
    assert_no_exception(at)
    stored = case_log.read_case(case_log.find_case(record["case"]))
    assert (stored["label"], stored["patient"]) == (other, "P-42")
    assert len(case_log.list_cases()[0]) == len(earlier) + 1  # the reruns logged nothing more

    reloaded = open_page(navigation.PREDICT)  # a new session, no upload: the answer is still there
    assert_no_exception(reloaded)
    table = next(frame.value for frame in reloaded.dataframe)
    row = table[table["case"] == record["case"]].iloc[0]
    assert (row["label"], row["patient"], row["file"]) == (other, "P-42", scan.name)


def test_the_report_names_the_run_its_test_figures_and_its_calibration(trained_run):
    from core.runs import catalogue

    run = catalogue.load_run(trained_run)
    model = report.model_summary(run)
    assert model["run"] == trained_run.name and model["recipe"]  # the smoke run's changes, e.g. input_size=64
    assert model["figures"].startswith("test split (") and "95% CI" in model["figures"]
    line = report.calibration_line(trained_run, None)
    assert "borderline between" in line and ("validation split" in line or "not calibrated" in line)


def test_predict_scan_logs_one_case_per_scan_with_its_counted_slices_kept(trained_artifacts, trained_run, data_dir,
                                                                           tmp_path):
    from core.cli.main import main

    folder = tmp_path / "scan"
    folder.mkdir()
    for path in sorted((data_dir / "COVID").glob("*.png"))[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    earlier = {r["case"] for r in case_log.list_cases()[0]}
    assert main(["predict-scan", str(folder), "--run", str(trained_run), "--keep-images"]) == 0
    [record] = [r for r in case_log.list_cases()[0] if r["case"] not in earlier]
    assert (record["kind"], record["file"], record["slices"], record["source"]) == ("scan", "scan", 3, "cli")
    names = sorted(p.name for p in folder.iterdir())
    digest = hashlib.sha256()
    for name in names:  # a folder's digest: its files' names and digests, in order
        digest.update(name.encode() + b"\0" + hashlib.sha256((folder / name).read_bytes()).digest())
    assert record["sha256"] == digest.hexdigest()
    kept = case_log.kept_images(record)
    assert kept and all(path.read_bytes().startswith(b"\x89PNG") for path in kept)
