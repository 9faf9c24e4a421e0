"""A PACS over DICOMweb (dicomweb-client): search studies and series
(QIDO-RS), fetch one series (WADO-RS), store instances back (STOW-RS).

Every request has a timeout and every answer a size limit, read at most
once past it (PacsSession); what is fetched goes through the reader of an
uploaded series (core.data.scans.read_files), so it is decoded, ordered and
checked exactly as one. A server that is down, slow, or answers something
that is not DICOMweb raises PacsError, one line naming the server and the
problem.
"""
from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from core.data import scans
from core.data.limits import (
    MAX_FILE_BYTES,
    MAX_SCAN_BYTES,
    MAX_SERIES,
    MAX_SLICES,
    MAX_STUDIES_LISTED,
)

# (connect, read) seconds: a PACS on the hospital network answers a search in well under a second.
TIMEOUT_S = (5.0, 30.0)
# A whole answer (one instance, one listing) must arrive within this, however slowly its bytes trickle.
ANSWER_S = 120.0
# Ask for each instance as stored (JPEG Lossless stays JPEG Lossless): the series reader decodes it.
AS_STORED = (("application/dicom", "*"),)
ENV_URL = "COVIDCT_PACS_URL"  # the server the app offers first


class PacsError(ValueError):
    """"PACS <url>: <what went wrong>", in plain words."""


class PacsSession(requests.Session):
    """A requests session whose every answer is read now, within MAX_FILE_BYTES
    and ANSWER_S: a server that streams without end is cut off, not waited on."""

    def request(self, method, url, **kwargs):
        kwargs["stream"] = True
        response = super().request(method, url, **kwargs)
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > MAX_FILE_BYTES:
            response.close()
            raise PacsError(f"an answer of {megabytes(int(declared))}, more than the "
                            f"{megabytes(MAX_FILE_BYTES)} one file may have")
        body, started = bytearray(), time.monotonic()
        # read1: whatever has arrived, so a trickle is timed between its bytes, not per 64 kB.
        while chunk := response.raw.read1(2**16, decode_content=True):
            body += chunk
            if len(body) > MAX_FILE_BYTES:
                response.close()
                raise PacsError(f"an answer longer than the {megabytes(MAX_FILE_BYTES)} one file may have")
            if time.monotonic() - started > ANSWER_S:
                response.close()
                raise requests.Timeout(f"the answer took over {ANSWER_S:.0f} s")
        # requests keeps a read body here: the client's later reads see these bytes, read within the limits.
        response._content, response._content_consumed = bytes(body), True
        return response


def megabytes(size: int) -> str:
    return f"{size / 2**20:.3g} MB"


@dataclass
class Series:
    uid: str
    modality: str
    description: str
    number: str
    instances: int | None


def client(url: str) -> DICOMwebClient:
    web = DICOMwebClient(url.rstrip("/"), session=PacsSession(), timeout=TIMEOUT_S)
    # The client's own retries wait up to 31 s more on a stuck server: a clinician waiting at the
    # page is told at once, and can press again.
    web.set_http_retry_params(retry=False)
    return web


@contextlib.contextmanager
def talking_to(url: str, what: str):
    """Any failure while doing `what` with the server at `url` as one PacsError."""
    try:
        yield
    except PacsError as error:
        raise PacsError(f"PACS {url}: {what}: {error}") from None
    except requests.Timeout:
        raise PacsError(f"PACS {url}: {what}: no answer within {TIMEOUT_S[1]:.0f} s (server too slow "
                        "or stuck)") from None
    except requests.ConnectionError:
        raise PacsError(f"PACS {url}: {what}: cannot connect (server down, wrong address or port)") from None
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise PacsError(f"PACS {url}: {what}: the server answered HTTP {status}") from None
    except requests.JSONDecodeError as error:
        raise PacsError(f"PACS {url}: {what}: the answer is not DICOMweb (not JSON: {str(error)[:200]})") from None
    except requests.RequestException as error:
        raise PacsError(f"PACS {url}: {what}: {type(error).__name__} ({str(error)[:200]})") from None
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, pydicom.errors.InvalidDicomError) as error:
        # JSON that is not a DICOM JSON listing, a multipart body that is not DICOM...
        raise PacsError(f"PACS {url}: {what}: the answer is not DICOMweb ({type(error).__name__}: "
                        f"{str(error)[:200]})") from None


def value(record: dict, keyword: str) -> str:
    """One attribute of a DICOM JSON record as text ('' when absent); a person's name by its letters."""
    tag = f"{pydicom.datadict.tag_for_keyword(keyword):08X}"
    values = (record.get(tag) or {}).get("Value") or [""]
    first = values[0]
    return str(first.get("Alphabetic", "")) if isinstance(first, dict) else str(first)


def listing(records, key: str) -> list[dict]:
    """A QIDO answer checked to be what DICOM JSON lists are: a list of records (dicts), each with
    its `key` UID (a client wraps a lone dict in a list: that alone would pass)."""
    if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
        raise PacsError(f"the answer is not DICOMweb (a {type(records).__name__}, not a list of DICOM JSON records)")
    if not all(value(record, key) for record in records):
        raise PacsError(f"the answer is not DICOMweb (a record without its {key})")
    return records


def find_studies(url: str, patient_id: str | None = None, date: str | None = None,
                 modality: str | None = None) -> tuple[list[dict], str | None]:
    """(studies, note): at most MAX_STUDIES_LISTED matching studies, each a dict
    (study_uid, patient_id, patient_name, date, description, modalities); the note
    says when more matched."""
    filters = {key: given for key, given in (("PatientID", patient_id), ("StudyDate", date),
                                             ("ModalitiesInStudy", modality)) if given}
    with talking_to(url, "searching studies"):
        records = listing(client(url).search_for_studies(search_filters=filters, limit=MAX_STUDIES_LISTED + 1),
                          "StudyInstanceUID")
        studies = [{"study_uid": value(r, "StudyInstanceUID"), "patient_id": value(r, "PatientID"),
                    "patient_name": value(r, "PatientName"), "date": value(r, "StudyDate"),
                    "description": value(r, "StudyDescription"),
                    "modalities": value(r, "ModalitiesInStudy")} for r in records]
    note = (f"more than {MAX_STUDIES_LISTED} studies match: the first {MAX_STUDIES_LISTED} are listed; "
            "narrow the search (patient, date)") if len(studies) > MAX_STUDIES_LISTED else None
    return studies[:MAX_STUDIES_LISTED], note


def find_series(url: str, study_uid: str) -> list[Series]:
    """The series of a study; PacsError when it lists more than MAX_SERIES."""
    with talking_to(url, f"listing the series of study {study_uid}"):
        records = listing(client(url).search_for_series(study_uid, limit=MAX_SERIES + 1), "SeriesInstanceUID")
        if len(records) > MAX_SERIES:  # a server may ignore the limit asked for: counted here too
            raise PacsError(f"it lists {len(records)} series or more, more than the {MAX_SERIES} "
                            "a study may have; refused")
        found = [Series(value(r, "SeriesInstanceUID"), value(r, "Modality"), value(r, "SeriesDescription"),
                        value(r, "SeriesNumber"), int(value(r, "NumberOfSeriesRelatedInstances") or 0) or None)
                 for r in records]
    if not found:
        raise PacsError(f"PACS {url}: study {study_uid} has no series (or no such study)")
    return found


def scan_series(series: list[Series]) -> Series:
    """The series a scan is read from when none is named: the CT series with the most instances."""
    ct = [s for s in series if s.modality.upper() == "CT"] or series
    return max(ct, key=lambda s: s.instances or 0)


def fetch_series(url: str, study_uid: str, series_uid: str) -> list[tuple[str, bytes]]:
    """The series' instances as (SOPInstanceUID.dcm, DICOM file bytes), as stored, ordered by name;
    at most MAX_SLICES of them, MAX_SCAN_BYTES in all."""
    where = f"fetching series {series_uid}"
    with talking_to(url, where):
        web = client(url)
        records = listing(web.search_for_instances(study_uid, series_uid, limit=MAX_SLICES + 1), "SOPInstanceUID")
        if len(records) > MAX_SLICES:
            raise PacsError(f"{len(records)} instances or more, more than the {MAX_SLICES} slices a scan may have")
        if not records:
            raise PacsError("the series has no instances (or no such series)")
        files, total = [], 0
        for record in records:
            sop_uid = value(record, "SOPInstanceUID")
            dataset = web.retrieve_instance(study_uid, series_uid, sop_uid, media_types=AS_STORED)
            content = file_bytes(dataset)
            total += len(content)
            if total > MAX_SCAN_BYTES:
                raise PacsError(f"more than the {MAX_SCAN_BYTES // 2**20} MB a scan may have")
            files.append((f"{sop_uid}.dcm", content))
    return sorted(files)  # by SOP UID: one series, one order (and case digest), however the server lists it


def file_bytes(dataset: pydicom.Dataset) -> bytes:
    """A retrieved instance as a DICOM file, its pixel data as the server sent it."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def read_scan(url: str, study_uid: str, series_uid: str | None = None
              ) -> tuple[scans.Scan, pydicom.Dataset, list[tuple[str, bytes]]]:
    """(the scan, the header of its first instance: whose patient and study a result is for, the fetched
    files: what the case log's digest is over). Without `series_uid`, the study's CT series with the most
    instances. ImageReadError names a bad instance."""
    series_uid = series_uid or scan_series(find_series(url, study_uid)).uid
    files = fetch_series(url, study_uid, series_uid)
    scan = scans.read_files(files, f"series {series_uid}")
    header = pydicom.dcmread(io.BytesIO(files[0][1]), stop_before_pixels=True)
    if str(header.get("StudyInstanceUID", "")) != study_uid:
        raise PacsError(f"PACS {url}: series {series_uid} belongs to study {header.get('StudyInstanceUID')}, "
                        f"not {study_uid}")
    return scan, header, files


def store(url: str, datasets: list[pydicom.Dataset], study_uid: str) -> None:
    """Store `datasets` into study `study_uid`; PacsError when the server refuses any."""
    with talking_to(url, f"storing into study {study_uid}"):
        answer = client(url).store_instances(datasets, study_instance_uid=study_uid)
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reasons = ", ".join(str(item.get("FailureReason", "?")) for item in failed)
            raise PacsError(f"the server refused {len(failed)} instance(s) (failure reason {reasons})")
