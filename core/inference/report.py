"""A prediction's report, from plain values and image arrays: a PDF (fpdf2)
of one slice or scan, and the Grad-CAM picture with its answer written on
it, so that what leaves the app carries the probability, the decision, the
model and the research-use label with it.

DISCLAIMER is the one wording of the research-use label: the app's frame
(ui.frame) shows this text too.
"""
from __future__ import annotations

import textwrap
from datetime import UTC, datetime

import cv2
import numpy as np
from PIL import Image

from core.inference import deploy, site_store
from core.inference.calibration import for_run, percent
from core.inference.heatmaps import colour_bar
from core.runs.train_config import recipe_changes

DISCLAIMER = ("Research use only. This tool is not a medical device and must not be used "
              "to diagnose, treat or rule out COVID-19.")
REPORT_FONT = "Helvetica"  # a PDF core font: nothing embedded, Latin-1 text only (latin1 below)


def latin1(text) -> str:
    """`text` in what a core font can draw: other characters become '?' (a file name's, a dash)."""
    text = str(text).replace("\u2013", "-").replace("\u2014", "-").replace("\u2264", "<=")
    return text.encode("latin-1", "replace").decode("latin-1")


def model_summary(run: dict) -> dict:
    """The model that answered, as a report states it: its run, recipe and test figures
    (at its validation-chosen threshold, from the run's stored metrics)."""
    test = deploy.test_figures(run)
    figures = "no test figures stored"
    if test:
        low, high = (test.get("ci") or {}).get("roc_auc", [None, None])
        figures = (f"test split ({test.get('n')} slices): ROC-AUC {_number(test.get('roc_auc'))} "
                   f"(95% CI {_number(low)}-{_number(high)}), sensitivity {_number(test.get('recall'))}, "
                   f"specificity {_number(test.get('specificity'))} at its threshold")
    return {"run": run["id"], "recipe": recipe_changes(run.get("config") or {}), "figures": figures}


def calibration_line(run_dir, site: str | None) -> str:
    """How the probabilities were calibrated and where the borderline band lies: the
    site profile's calibration (core.inference.site_store) or the run's own (calibration.for_run)."""
    calibration = site_store.calibration_for(run_dir, site) if site else for_run(run_dir)
    fitted_on = f"site {site}'s labelled patients" if site else "the validation split"
    how = (f"{calibration.method} scaling fitted on {fitted_on} ({calibration.n_val} slices)"
           if calibration.method != "none" else "not calibrated: the model's own scale"
           + (f" ({calibration.note})" if calibration.note else ""))
    low, high = calibration.borderline
    return f"{how}; borderline between {percent(low)} and {percent(high)}"


def _number(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def answer_lines(record: dict) -> list[str]:
    """The answer in words: probability, decision, threshold, calibration, borderline, refusal."""
    probability = record["probability"]
    lines = [f"Probability of {record['positive_class']}: "
             + ("none (no slice like the training scans)" if probability is None else percent(probability)),
             f"Decision: {record['decision']}" + (" (borderline: too close to call)" if record["borderline"] else ""),
             f"Threshold: {percent(record['threshold'])}, {record['calibration']}"]
    if record["refused"]:
        lines.append("Refused by the guard: not like the training scans" +
                     (f" ({'; '.join(record['reasons'])})" if record["reasons"] else ""))
    elif record["kind"] == "scan" and record["reasons"]:
        lines.append("Notes: " + "; ".join(record["reasons"]))
    if record.get("label"):
        lines.append(f"Correct label stored by a user: {record['label']}"
                     + (f" (patient {record['patient']})" if record.get("patient") else ""))
    return lines


def report_pdf(record: dict, model: dict, image: np.ndarray, overlay: np.ndarray | None,
               image_caption: str = "slice", overlay_caption: str = "Grad-CAM") -> bytes:
    """A one-page PDF of one case (a case_log record): the image and its Grad-CAM
    with the colour bar, the answer, the model and its figures (model_summary, and
    optionally its "calibration": calibration_line), the date and the disclaimer.
    Returns the PDF's bytes."""
    from fpdf import FPDF  # only when a report is asked for

    pdf = FPDF(format="A4")
    pdf.set_title(latin1(f"COVID-19 CT Explorer report: {record['file']}"))
    pdf.add_page()
    width = pdf.epw
    pdf.set_font(REPORT_FONT, style="B", size=15)
    pdf.multi_cell(width, 8, latin1(f"COVID-19 CT Explorer: {record['kind']} report"), new_x="LMARGIN", new_y="NEXT")
    _disclaimer(pdf, width)
    pdf.set_font(REPORT_FONT, size=10)
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    _lines(pdf, width, [f"File: {record['file']} ({record['slices']} slice(s))", f"sha256: {record['sha256']}",
                        f"Predicted: {record['time']} - report made {made} - case {record['case']}"])
    pdf.ln(2)
    pdf.set_font(REPORT_FONT, style="B", size=12)
    _lines(pdf, width, answer_lines(record), height=6)
    pdf.set_font(REPORT_FONT, size=10)
    pdf.ln(2)
    _pictures(pdf, width, image, overlay, image_caption, overlay_caption, record)
    pdf.set_font(REPORT_FONT, style="B", size=10)
    _lines(pdf, width, ["Model"])
    pdf.set_font(REPORT_FONT, size=9)
    _lines(pdf, width, [f"Run: {model['run']}", f"Recipe: {model['recipe']}", f"Figures: {model['figures']}",
                        f"Site / calibration: {record['site'] or 'none'} / {record['calibration']}"]
           + ([f"Calibration: {model['calibration']}"] if model.get("calibration") else []))
    pdf.ln(3)
    _disclaimer(pdf, width)
    return bytes(pdf.output())


def _lines(pdf, width: float, lines: list[str], height: float = 5) -> None:
    for line in lines:
        pdf.multi_cell(width, height, latin1(line), new_x="LMARGIN", new_y="NEXT")


def _disclaimer(pdf, width: float) -> None:
    pdf.set_font(REPORT_FONT, style="B", size=10)
    pdf.set_text_color(170, 0, 0)
    pdf.multi_cell(width, 5, latin1(DISCLAIMER), border=1, new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    pdf.ln(2)


def _pictures(pdf, width: float, image, overlay, image_caption: str, overlay_caption: str, record: dict) -> None:
    """The image and its Grad-CAM side by side, then the colour bar and how to read it."""
    side = (width - 6) / 2
    top = pdf.get_y()
    heights = []
    for column, (picture, caption) in enumerate(((image, image_caption), (overlay, overlay_caption))):
        if picture is None:
            continue
        picture = np.ascontiguousarray(picture)
        height = side * picture.shape[0] / picture.shape[1]
        pdf.image(Image.fromarray(picture), x=pdf.l_margin + column * (side + 6), y=top, w=side, h=height)
        pdf.set_xy(pdf.l_margin + column * (side + 6), top + height + 1)
        pdf.multi_cell(side, 4, latin1(caption))
        heights.append(height)
    pdf.set_xy(pdf.l_margin, top + max(heights, default=0) + 10)
    if overlay is not None:
        evidence_for = record["decision"] if record["decision"] != "refused" else record["positive_class"]
        pdf.image(Image.fromarray(colour_bar(512, 16)), x=pdf.l_margin, w=side)
        reading = (f"Heatmap colours: blue = no evidence for {evidence_for}, red = the strongest evidence for it "
                   "in this image. Each map is scaled to its own image: red marks where the model found "
                   "evidence, not how much.")
        _lines(pdf, width, [reading], height=4)
    pdf.ln(2)


def labelled_picture(picture: np.ndarray, lines: list[str]) -> np.ndarray:
    """`picture` (uint8 H x W x 3) with a white band below holding the colour bar,
    `lines` and the disclaimer: a Grad-CAM that carries its answer when downloaded."""
    width = max(picture.shape[1], 480)
    scale = width / 640
    # Hershey glyphs at this size are about 8.5 px wide on a 640 px band: 75 characters to a line.
    text = [part for line in [*lines, DISCLAIMER]
            for part in textwrap.wrap(latin1(line).encode("ascii", "replace").decode(), 75)]
    line_height = max(14, round(22 * scale))
    bar = cv2.resize(colour_bar(), (width - 20, max(8, round(12 * scale))), interpolation=cv2.INTER_NEAREST)
    band = np.full((bar.shape[0] + 20 + line_height * len(text), width, 3), 255, dtype=np.uint8)
    band[10:10 + bar.shape[0], 10:10 + bar.shape[1]] = bar
    for number, line in enumerate(text):
        cv2.putText(band, line, (10, bar.shape[0] + 10 + line_height * (number + 1)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45 * scale, (0, 0, 0), 1, cv2.LINE_AA)
    canvas = np.full((picture.shape[0], width, 3), 255, dtype=np.uint8)
    canvas[:, :picture.shape[1]] = picture[..., :3] if picture.ndim == 3 else picture[..., None]
    return np.vstack([canvas, band])
