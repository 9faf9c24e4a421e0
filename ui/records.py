"""What Predict keeps of its answers (core.inference.case_log, report): each
answer logged once per session, its PDF report and labelled Grad-CAM PNG to
download, "This answer is wrong" to store the correct label, the CSV of the
answers shown, and the case log itself, newest first, which survives a
reload. No TensorFlow here: the page hands over the overlays to draw as
callables (ui.model computes them)."""
from __future__ import annotations

import io
from functools import partial
from pathlib import Path

import streamlit as st
from PIL import Image

from core.base import paths
from core.inference import case_log, report
from ui.formatting import plain

SESSION_CASES = "case_records"  # session_state: what this session logged, by what was asked
SHOWN_CASES = 200  # the newest cases the log table reads


def keep_images_toggle() -> bool:
    """Whether this session's uploads are kept with their records (default: the one setting, paths.keep_case_images)."""
    return st.toggle("Keep the uploaded images in the case log", value=paths.keep_case_images(),
                     key="keep_case_images", persist_state="session",
                     help="Off: the log keeps only each file's sha256, name and the answer. On: the images too, so "
                          "that cases you label can be exported as your site's labelled set (docs/records.md).")


def _logged(key: str, write) -> dict | None:
    """The record of `key` logged by this session, written now (write()) on its first answer.
    A script rerun (any click) must not log the same answer again."""
    logged = st.session_state.setdefault(SESSION_CASES, {})
    if key not in logged:
        try:
            logged[key] = write()
        except (OSError, ValueError) as error:  # a full disk, a read-only artifacts folder: say so, answer anyway
            st.warning(f"This answer could not be logged in {paths.cases_dir()}: {plain(str(error))}",
                       icon=":material/warning:")
            return None
    return logged[key]


def slice_case(run: dict, file_name: str, content: bytes, prediction) -> dict | None:
    """The case log's record of one uploaded slice's answer."""
    inputs = [(file_name, content)]
    key = f"slice:{case_log.input_digest(inputs)}:{run['id']}:{prediction.site}"
    keep = st.session_state.get("keep_case_images", paths.keep_case_images())
    return _logged(key, lambda: case_log.log_case(
        case_log.slice_values(prediction, run["path"]), inputs, file_name, "app",
        report.model_summary(run)["recipe"], kept=case_log.slice_image(prediction) if keep else None))


def scan_case(run: dict, name: str, files: list[tuple[str, bytes]], result) -> dict | None:
    """The case log's record of one uploaded scan's answer (the slices it counted kept when asked)."""
    key = f"scan:{case_log.input_digest(files)}:{run['id']}:{result.settings.get('site')}"
    keep = st.session_state.get("keep_case_images", paths.keep_case_images())
    return _logged(key, lambda: case_log.log_case(
        case_log.scan_values(result, run["path"]), files, name, "app", report.model_summary(run)["recipe"],
        kept=case_log.scan_images(result) if keep else None))


def _pdf(run: dict, case: str, image, overlay, image_caption: str, overlay_caption: str) -> bytes:
    """The report, built on click from the case's record as it is now (with a label stored since)."""
    record = case_log.read_case(case_log.find_case(case))
    model = {**report.model_summary(run), "calibration": report.calibration_line(run["path"], record["site"])}
    return report.report_pdf(record, model, image, overlay() if overlay else None, image_caption, overlay_caption)


def answer_controls(run: dict, record: dict | None, image, overlay=None, key: str = "",
                    image_caption: str = "slice", overlay_caption: str = "Grad-CAM") -> None:
    """The PDF report of this answer and "This answer is wrong", beside the answer.
    `overlay`: a callable drawing the Grad-CAM, called only when the report is asked for."""
    if record is None:
        return
    report_column, wrong_column = st.columns(2)
    report_column.download_button(
        "Download the PDF report", partial(_pdf, run, record["case"], image, overlay, image_caption, overlay_caption),
        file_name=f"{Path(record['file'].replace(chr(92), '/')).stem or 'case'}-report.pdf", mime="application/pdf",
        key=f"pdf_{key}", on_click="ignore", icon=":material/picture_as_pdf:")
    with wrong_column.popover("This answer is wrong", icon=":material/flag:"):
        _wrong_answer_form(record, key)


def _wrong_answer_form(record: dict, key: str) -> None:
    """The correct label (and, if known, the patient) stored in the case's log entry."""
    classes = [record["negative_class"], record["positive_class"]]
    other = classes[0] if record["decision"] == classes[1] else classes[1]
    with st.form(f"wrong_{key}", border=False):
        label = st.radio("The correct label", classes, index=classes.index(other), horizontal=True,
                         key=f"wrong_label_{key}")
        patient = st.text_input("Patient id (optional)", max_chars=case_log.MAX_PATIENT_LENGTH,
                                key=f"wrong_patient_{key}",
                                help="Letters, digits, '.', '_' and '-'. Slices of one patient are then kept "
                                     "together when the log is exported as a site's labelled set.")
        if not st.form_submit_button("Store the correct label"):
            return
    try:
        updated = case_log.set_label(record["case"], label, patient)
    except (ValueError, OSError) as error:
        st.error(f"Not stored: {plain(str(error))}")
        return
    record.update(updated)
    st.success(f"Stored: {label}" + (f", patient {updated['patient']}" if updated["patient"] else "") + ".")


def labelled_png(image, record: dict | None, method: str) -> bytes:
    """A Grad-CAM overlay as PNG with its answer, the colour bar and the research-use label under it."""
    lines = [method] if record is None else [f"{method}: {record['file']}", *report.answer_lines(record),
                                             f"Model: run {record['run']}"]
    buffer = io.BytesIO()
    Image.fromarray(report.labelled_picture(image, lines)).save(buffer, format="PNG")
    return buffer.getvalue()


def session_table() -> None:
    """The CSV of the answers this session logged."""
    records = [record for record in st.session_state.get(SESSION_CASES, {}).values() if record]
    if records:
        table = case_log.case_table(records)
        st.download_button(f"Download these {len(records)} answer(s) as CSV",
                           table.to_csv(index=False).encode(), file_name="predictions.csv", mime="text/csv",
                           key="session_csv", on_click="ignore", icon=":material/table:")


def case_log_expander() -> None:
    """The case log, newest first: earlier answers, from this session or any other, and their labels."""
    with st.expander("Case log: every answer, newest first", icon=":material/history:"):
        records, problems = case_log.list_cases(limit=SHOWN_CASES)
        if not records:
            st.caption(f"No answers logged yet in {paths.cases_dir()}.")
        else:
            table = case_log.case_table(records)
            st.dataframe(table.drop(columns=["sha256", "source"]), hide_index=True,
                         column_config={"probability": st.column_config.NumberColumn(format="percent")})
            st.download_button("Download the case log as CSV", table.to_csv(index=False).encode(),
                               file_name="case-log.csv", mime="text/csv", key="case_log_csv", on_click="ignore")
            st.caption(f"The newest {SHOWN_CASES} answers at most. Labelled cases with kept images become a "
                       "site's labelled set: `python -m core cases export DIR` (docs/records.md).")
        for problem in problems:
            st.warning(f"Not a case record, skipped: {plain(problem)}", icon=":material/warning:")

