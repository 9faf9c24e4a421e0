"""A PACS round trip (core.data.pacs, core.inference.pacs_result, pacs-find, predict-scan --pacs): a real
Orthanc with its DICOMweb plugin, started here on a free local port with its own storage, holding the
shared JPEG-Lossless series; found, fetched, scored, the result stored back and read back. And the
servers a clinic must survive: down, slow, answering garbage, listing a thousand series."""
import contextlib
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid
from test_app import deployed, run_id  # noqa: F401 (fixtures)

from core.base.paths import SHARED
from core.cli import common, main
from core.data import pacs
from core.data.limits import MAX_SERIES
from core.inference import pacs_result

SERIES = SHARED / "data" / "external" / "COVID-CT-MD-dicom" / "COVID" / "P002"
PLUGIN_PLACES = [Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
                 Path("/usr/lib/orthanc/libOrthancDicomWeb.so")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def orthanc_missing() -> str | None:
    if not shutil.which("Orthanc"):
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
    if not any(place.exists() for place in PLUGIN_PLACES):
        return "Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return None


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """An Orthanc of this test module's own: temporary storage, a free port, local access only, no
    authentication, the DICOMweb plugin loaded. Yields its DICOMweb root; stopped after."""
    missing = orthanc_missing()
    if missing:
        if os.environ.get("COVIDCT_REQUIRE_PACS") == "1":
            pytest.fail(f"COVIDCT_REQUIRE_PACS=1 but {missing}")
        pytest.skip(missing)
    folder = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    plugin = next(place for place in PLUGIN_PLACES if place.exists())
    config = {"Name": "covidct-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
              "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "Plugins": [str(plugin)],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (folder / "orthanc.json").write_text(json.dumps(config))
    with open(folder / "orthanc.log", "w") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(["Orthanc", str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{base}/system", timeout=1).ok:
                    break
            if process.poll() is not None:
                pytest.fail(f"Orthanc stopped at start: {(folder / 'orthanc.log').read_text()[-500:]}")
            time.sleep(0.2)
        yield f"{base}/dicom-web"
    finally:
        process.terminate()
        process.wait(timeout=20)


def as_stored_in_a_pacs(path: Path) -> bytes:
    """A shared file with the UIDs a PACS requires (the dataset's were blanked or made UUIDs when it
    was anonymised); its JPEG-Lossless pixel data left as it is."""
    dataset = pydicom.dcmread(path)
    dataset.StudyInstanceUID = generate_uid(entropy_srcs=[path.parent.name, "study"])
    dataset.SeriesInstanceUID = generate_uid(entropy_srcs=[path.parent.name, "series"])
    dataset.SOPInstanceUID = generate_uid(entropy_srcs=[path.parent.name, path.name])
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.StudyDate = "20200401"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def study(orthanc) -> str:
    """The shared JPEG-Lossless series stored through Orthanc's REST API; its StudyInstanceUID."""
    if not SERIES.is_dir():
        pytest.skip(f"shared DICOM series not found at {SERIES}")
    for path in sorted(SERIES.glob("*.dcm")):
        requests.post(orthanc.removesuffix("/dicom-web") + "/instances", data=as_stored_in_a_pacs(path),
                      timeout=30).raise_for_status()
    return generate_uid(entropy_srcs=[SERIES.name, "study"])


def test_pacs_find_lists_the_study_by_patient_date_and_modality(orthanc, study, capsys):
    assert main.main(["pacs-find", orthanc, "--patient", "P002", "--date", "20200401", "--modality", "CT",
                      "--series"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t")[:4] == [study, "P002", "20200401", "CT"]
    assert "45 instances" in lines[1]
    assert main.main(["pacs-find", orthanc, "--patient", "nobody"]) == 0
    assert "no study matches" in capsys.readouterr().err


def test_a_fetched_series_reads_as_the_same_files_uploaded(orthanc, study):
    from core.data import scans

    scan, header, _ = pacs.read_scan(orthanc, study)
    uploaded = scans.read_files([(path.name, as_stored_in_a_pacs(path)) for path in sorted(SERIES.glob("*.dcm"))],
                                "upload")
    assert scan.kind == "DICOM series" and len(scan.slices) == 45 and header.PatientID == "P002"
    assert scan.positions == uploaded.positions  # ordered along the body axis, as an upload is
    assert all((a == b).all() for a, b in zip(scan.slices, uploaded.slices))


def test_round_trip_predicts_and_stores_a_research_result_in_the_same_study(orthanc, study, trained_run, capsys):
    from core.inference import case_log

    earlier = {r["case"] for r in case_log.list_cases()[0]}
    code = main.main(["predict-scan", "--pacs", orthanc, "--study", study, "--send-back", "--run", str(trained_run)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    fields = printed.out.strip().split("\t")
    assert fields[1] == "45 slices read, " + fields[1].split(", ")[1]
    # The answer is logged as a file's is: one case, its digest over the fetched instances, no image kept.
    [record] = [r for r in case_log.list_cases()[0] if r["case"] not in earlier]
    _, _, fetched = pacs.read_scan(orthanc, study)
    assert record["file"].startswith("series ") and record["source"] == "cli" and record["images"] == []
    assert record["sha256"] == case_log.input_digest(fetched) and record["decision"] == fields[3].split(" ")[0]
    results = [s for s in pacs.find_series(orthanc, study) if s.uid != generate_uid(entropy_srcs=[SERIES.name,
                                                                                                   "series"])]
    assert len(results) == 1 and pacs_result.RESEARCH_LABEL in results[0].description
    [(_, content)] = pacs.fetch_series(orthanc, study, results[0].uid)
    back = pydicom.dcmread(io.BytesIO(content))
    assert back.StudyInstanceUID == study and back.PatientID == "P002"
    assert back.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert pacs_result.RESEARCH_LABEL in back.ImageComments and back.BurnedInAnnotation == "YES"
    structured = pacs_result.result_fields(back)
    assert structured["probability"] == fields[2] and structured["decision"] == fields[3].split(" ")[0]
    assert back.pixel_array.shape[2] == 3 and back.pixel_array.shape[1] == pacs_result.SIDE
    key = back.SourceImageSequence[0].ReferencedSOPInstanceUID
    assert key == structured["key_slice"] and f"most suspicious: {key}.dcm" in printed.out


@contextlib.contextmanager
def tiny_server(answer):
    """A local HTTP server whose every GET is answered by answer(handler); yields its URL."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            with contextlib.suppress(OSError):  # the client gave up: nothing to tell it
                answer(self)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()


def reply(handler, body: bytes, status: int = 200, kind: str = "application/dicom+json") -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", kind)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def test_a_server_that_is_down_is_named_in_plain_words(capsys):
    url = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
    assert main.main(["pacs-find", url]) == common.EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert error.startswith(f"error: PACS {url}: searching studies: cannot connect") and "Traceback" not in error


def test_a_slow_server_times_out(monkeypatch):
    monkeypatch.setattr(pacs, "TIMEOUT_S", (1.0, 1.0))
    with tiny_server(lambda handler: (time.sleep(3), reply(handler, b"[]"))) as url:
        started = time.monotonic()
        with pytest.raises(pacs.PacsError, match=f"PACS {url}: searching studies: no answer within 1 s"):
            pacs.find_studies(url)
    assert time.monotonic() - started < 3


def test_a_server_that_trickles_without_end_is_cut_off(monkeypatch):
    monkeypatch.setattr(pacs, "ANSWER_S", 1.0)

    def trickle(handler):
        handler.send_response(200)
        handler.end_headers()
        for _ in range(600):  # a minute of one byte every 0.1 s: each read is quick, the answer never ends
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.1)

    started = time.monotonic()
    with tiny_server(trickle) as url, pytest.raises(pacs.PacsError, match="no answer within"):
        pacs.find_studies(url)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("body, kind", [(b"<html>not a PACS</html>", "text/html"),
                                        (b'[{"0020000D": 17}]', "application/dicom+json"),
                                        (b'{"studies": "yes"}', "application/dicom+json")])
def test_garbage_is_refused_as_not_dicomweb(body, kind):
    with tiny_server(lambda handler: reply(handler, body, kind=kind)) as url, \
            pytest.raises(pacs.PacsError, match="searching studies: the answer is not DICOMweb"):
        pacs.find_studies(url)


def test_an_answer_over_the_size_limit_is_refused_before_it_is_read(monkeypatch):
    monkeypatch.setattr(pacs, "MAX_FILE_BYTES", 1000)
    with tiny_server(lambda handler: reply(handler, b"[" + b"{}," * 1000 + b"{}]")) as url, \
            pytest.raises(pacs.PacsError, match="an answer of 0.00286 MB, more than the 0.000954 MB one file"):
        pacs.find_studies(url)


def test_a_study_listing_a_thousand_series_is_refused():
    record = {"0020000E": {"vr": "UI", "Value": ["1.2.3"]}, "00080060": {"vr": "CS", "Value": ["CT"]}}
    with tiny_server(lambda handler: reply(handler, json.dumps([record] * 1000).encode())) as url, \
            pytest.raises(pacs.PacsError, match=rf"lists 1000 series or more, more than the {MAX_SERIES} a study may have"):
        pacs.read_scan(url, "1.2.3")


def test_predict_scan_takes_files_or_a_pacs_study_not_both(capsys):
    assert main.main(["predict-scan", "a_folder", "--pacs", "http://x", "--study", "1"]) == common.EXIT_BAD_INPUT
    assert "scan files, or --pacs URL with --study UID" in capsys.readouterr().err
    assert main.main(["predict-scan", "a_folder", "--send-back"]) == common.EXIT_BAD_INPUT


def test_the_predict_page_finds_scores_and_sends_back_from_pacs(orthanc, study, deployed, monkeypatch):  # noqa: F811
    from test_app import assert_no_exception, open_page, texts

    from ui import navigation

    monkeypatch.setenv(pacs.ENV_URL, orthanc)
    at = open_page(navigation.PREDICT)
    assert at.text_input(key="pacs_url").value == orthanc
    at.text_input(key="pacs_patient").set_value("P002").run()
    assert_no_exception(at)
    assert at.selectbox(key="pacs_study").value == study
    at.toggle(key="pacs_fetch").set_value(True).run()
    assert_no_exception(at)
    assert "DICOM series: 45 slices read" in texts(at.caption)
    before = len(pacs.find_series(orthanc, study))
    at.button(key="pacs_send").click().run()
    assert_no_exception(at)
    assert "Sent back to" in texts(at.success) and len(pacs.find_series(orthanc, study)) == before + 1


def test_the_predict_page_names_a_server_that_is_down(deployed, monkeypatch):  # noqa: F811
    from test_app import assert_no_exception, open_page, texts

    from ui import navigation

    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    monkeypatch.setenv(pacs.ENV_URL, url)
    at = open_page(navigation.PREDICT)
    assert_no_exception(at)
    error = texts(at.error).replace("\\", "")  # plain() escapes Markdown's characters
    assert f"PACS {url}: searching studies: cannot connect" in error
