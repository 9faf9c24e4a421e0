"""python -m core pacs-find URL [--patient ID] [--date YYYYMMDD] [--modality CT]: a PACS's studies, one a line;
python -m core predict-scan --pacs URL --study UID [--series UID] [--send-back]: one study's scan scored, and with
--send-back its result stored into the same study as a new research series (core.inference.pacs_result).

URL is the server's DICOMweb root (Orthanc: http://host:8042/dicom-web). A server that is down, slow or
answers garbage ends with one line naming it and the problem, exit code 2 (core.data.pacs.PacsError).
"""
from __future__ import annotations

import re
import sys

DATE = re.compile(r"\d{8}(-\d{8})?|\d{8}-|-\d{8}")  # QIDO's date or date range


def add_parsers(commands) -> None:
    find = commands.add_parser("pacs-find", help="search a PACS (DICOMweb) for studies",
                               description="Lists the studies that match, one a line: study UID, patient id, "
                                           "date, modalities, description.")
    find.add_argument("url", help="the server's DICOMweb root, e.g. http://localhost:8042/dicom-web")
    find.add_argument("--patient", help="patient id")
    find.add_argument("--date", type=study_date, help="study date YYYYMMDD, or a range YYYYMMDD-YYYYMMDD")
    find.add_argument("--modality", help="a modality in the study, e.g. CT")
    find.add_argument("--series", action="store_true", help="also list each study's series")
    find.set_defaults(func=cmd_pacs_find)


def study_date(text: str) -> str:
    import argparse

    if not DATE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    return text


def cmd_pacs_find(args) -> int:
    from core.cli.common import shown
    from core.data import pacs

    studies, note = pacs.find_studies(args.url, args.patient, args.date, args.modality)
    for study in studies:
        print("\t".join(shown(study[key]) for key in ("study_uid", "patient_id", "date", "modalities",
                                                      "description")))
        if args.series:
            for series in pacs.find_series(args.url, study["study_uid"]):
                print("\t".join(shown(text) for text in ("", series.uid, series.modality,
                                                         f"{series.instances or '?'} instances",
                                                         series.description)))
    if not studies:
        print(f"no study matches on {shown(args.url)}", file=sys.stderr)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return 0


def scored_from_pacs(url: str, study_uid: str, series_uid: str | None, predictor, settings):
    """(the scan's ScanResult, the header of its series, the fetched files) for the study's scan read from
    the PACS."""
    from core.data import pacs
    from core.inference import scan_decision

    scan, source, files = pacs.read_scan(url, study_uid, series_uid)
    return scan_decision.score_scan(predictor, scan, settings), source, files


def send_back(url: str, study_uid: str, predictor, result, source, run_name: str) -> None:
    """The result stored into its study as a new research-only series; says so on stderr."""
    from core.cli.common import shown
    from core.data import pacs
    from core.inference import pacs_result

    dataset = pacs_result.result_for_study(predictor, result, source, run_name)
    pacs.store(url, [dataset], study_uid)
    print(f"sent back: series {dataset.SeriesInstanceUID} in study {shown(study_uid)} "
          f"({pacs_result.RESEARCH_LABEL})", file=sys.stderr)
