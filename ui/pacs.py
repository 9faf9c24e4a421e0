"""The Predict page's "From PACS" tab: a DICOMweb server (its address from a
settings field, first $COVIDCT_PACS_URL), a search by patient, date and
modality, a study and a series picked, the series scored and shown exactly
as an uploaded one (ui.scans.show_scan), and a button that sends the result
back into the same study as a research-only series (core.inference.pacs_result).

A server that is down, slow or answers garbage is named with the problem in
one line (core.data.pacs.PacsError), never a traceback. The model loads only
once a series is fetched: ui.scans and ui.model are imported then.
"""
from __future__ import annotations

import datetime
import io
import os

import pydicom
import streamlit as st

from core.data import pacs
from core.data.limits import ImageReadError
from ui.formatting import plain


@st.cache_data(ttl=60, max_entries=16, show_spinner=False)
def _studies(url: str, patient: str, date: str, modality: str):
    return pacs.find_studies(url, patient or None, date or None, modality or None)


@st.cache_data(ttl=60, max_entries=16, show_spinner=False)
def _series(url: str, study_uid: str) -> list[pacs.Series]:
    return pacs.find_series(url, study_uid)


@st.cache_data(max_entries=2, show_spinner=False)
def _fetched(url: str, study_uid: str, series_uid: str) -> list[tuple[str, bytes]]:
    return pacs.fetch_series(url, study_uid, series_uid)


def search_controls() -> tuple[str, str, str, str]:
    """(server URL, patient id, date YYYYMMDD or '', modality)."""
    url = st.text_input("PACS (DICOMweb root)", os.environ.get(pacs.ENV_URL, ""), key="pacs_url",
                        help=f"e.g. http://localhost:8042/dicom-web (Orthanc); set {pacs.ENV_URL} to fill "
                             "this in. Scans and results go to and from this server only.")
    patient, date, modality = st.columns(3)
    patient_id = patient.text_input("Patient ID", key="pacs_patient")
    day = date.date_input("Study date", value=None, key="pacs_date", min_value=datetime.date(1980, 1, 1))
    kind = modality.text_input("Modality", "CT", key="pacs_modality")
    return url.strip(), patient_id.strip(), day.strftime("%Y%m%d") if day else "", kind.strip()


def pick_series(url: str, patient_id: str, date: str, modality: str) -> tuple[str, str] | None:
    """The study and series picked from the search's answers; None (and why, shown) when none."""
    studies, note = _studies(url, patient_id, date, modality)
    if note:
        st.info(plain(note))
    if not studies:
        st.info("No study matches this search.")
        return None
    labels = {s["study_uid"]: f"{s['patient_id']} · {s['date']} · {s['modalities']} · {s['description']}"
              for s in studies}
    study_uid = st.selectbox("Study", list(labels), format_func=lambda uid: plain(labels[uid]), key="pacs_study")
    series = _series(url, study_uid)
    shown = {s.uid: f"{s.modality} · {s.instances or '?'} instances · {s.description or s.number}" for s in series}
    first = list(shown).index(pacs.scan_series(series).uid)
    series_uid = st.selectbox("Series", list(shown), index=first, format_func=lambda uid: plain(shown[uid]),
                              key="pacs_series")
    return study_uid, series_uid


def send_back(run: dict, url: str, study_uid: str, name: str, files: list[tuple[str, bytes]],
              site: str | None) -> None:
    """Store the scored series' result into its study (cached scoring: nothing is scored again)."""
    from core.inference import pacs_result
    from ui.model import predictor
    from ui.scans import score_upload

    result = score_upload(run, name, files, site)
    source = pydicom.dcmread(io.BytesIO(files[0][1]), stop_before_pixels=True)
    dataset = pacs_result.result_for_study(predictor(run, site), result, source, run["id"])
    pacs.store(url, [dataset], study_uid)
    st.success(f"Sent back to {plain(url)}: a new series in this study, “{pacs_result.SERIES_DESCRIPTION}”.")


def pacs_tab(run: dict, opacity: float, site: str | None) -> None:
    """The whole tab: search, pick, score and show, send back."""
    from ui.scans import show_scan

    url, patient_id, date, modality = search_controls()
    if not url:
        st.info(f"Give the PACS's DICOMweb address (or set {pacs.ENV_URL}) to search it.")
        return
    try:
        picked = pick_series(url, patient_id, date, modality)
        if picked is None or not st.toggle("Fetch and predict this series", key="pacs_fetch"):
            return
        study_uid, series_uid = picked
        with st.spinner("Fetching the series…"):
            files = _fetched(url, study_uid, series_uid)
        name = f"series {series_uid}"
        show_scan(run, name, files, opacity, site)
        if st.button("Send the result back to the PACS", key="pacs_send",
                     help="Stores the key slice with its Grad-CAM and the scan's probability and decision into "
                          "the same study, as a new series marked research use only."):
            send_back(run, url, study_uid, name, files, site)
    except (pacs.PacsError, ImageReadError) as error:
        st.error(plain(str(error)))
    except ValueError as error:  # no slice scored, so no key slice to send
        st.error(f"Cannot send this result: {plain(str(error))}")
