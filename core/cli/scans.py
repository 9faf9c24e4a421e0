"""python -m core predict-scan PATH [PATH ...] [--series N|UID] [--csv FILE]: one line per scan;
python -m core series PATH: one line per series of a DICOM study.

Each PATH is one scan: a folder or .zip of a DICOM study (its axial lung
series preselected by core.data.dicom_study, or the one --series names) or of
slice images, one (multi-frame) DICOM file, or a NIfTI volume. A scan that
cannot be read gets `error: <file>: <problem>` on stderr; the others are
still scored, and the exit code is then 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

from core.cli.cases import keep_option, log_scan, scan_inputs

CSV_COLUMNS = ["scan", "kind", "slices_read", "slices_scored", "probability", "decision", "most_suspicious",
               "most_suspicious_probability", "aggregation", "threshold", "borderline", "notes",
               # DICOM: the series read and its header summary (core.data.dicom_header.header_summary)
               "series", "series_description", "kernel", "slice_thickness_mm", "study_date", "scanner"]


def add_parser(commands) -> None:
    predict_scan = commands.add_parser(
        "predict-scan", help="one decision per scan (DICOM series folder or zip, NIfTI volume, folder of slices)",
        description="Reads each scan, scores the slices that show lung, and aggregates them into the scan's "
                    "probability, decided at the threshold chosen for scans on the run's validation patients. "
                    "Prints: scan, slices read / scored, scan probability, decision, most suspicious slice.")
    predict_scan.add_argument("scans", nargs="*", help="one scan each: a folder, a .zip, a .nii or .nii.gz")
    predict_scan.add_argument("--run", help="run id, or 'latest' (default: the deployed model)")
    predict_scan.add_argument("--csv", help="also write one row per scan to this CSV file")
    predict_scan.add_argument("--site", help="calibrate and decide with this site profile (site-profile list)")
    keep_option(predict_scan)
    predict_scan.add_argument("--series", help="the series to read in a DICOM study: its number in "
                                               "`python -m core series PATH` or its UID (default: the axial "
                                               "lung series preselected); with --pacs its SeriesInstanceUID "
                                               "(default: the study's CT series with the most instances)")
    predict_scan.add_argument("--pacs", metavar="URL", help="read the scan from this PACS's DICOMweb root "
                              "(core.cli.pacs) instead of files")
    predict_scan.add_argument("--study", help="with --pacs: the StudyInstanceUID (python -m core pacs-find)")
    predict_scan.add_argument("--send-back", action="store_true",
                              help="with --pacs: store the result into the same study as a new series, "
                                   "marked research use only")
    predict_scan.set_defaults(func=cmd_predict_scan)
    series = commands.add_parser(
        "series", help="list the series of a DICOM study (folder, zip or file), from their headers",
        description="One line per series: number (* = preselected for the lungs), UID, description, kernel, "
                    "slice thickness, orientation, image type, images. Text from the files is quoted "
                    "(JSON), so one series is always one line.")
    series.add_argument("study", help="a folder, a .zip or a DICOM file")
    series.set_defaults(func=cmd_series)


def result_row(result) -> dict:
    """A scored scan as one CSV row."""
    top = result.most_suspicious
    probability = result.scan_probability
    return {"scan": result.scan.name, "kind": result.scan.kind, "slices_read": len(result.scan.slices),
            "slices_scored": len(result.scored), "probability": None if probability is None else round(probability, 4),
            "decision": result.decision, "most_suspicious": None if top is None else result.scan.slice_names[top],
            "most_suspicious_probability": None if top is None else round(result.probability[top], 4),
            "aggregation": result.settings["aggregation"], "threshold": round(result.settings["threshold"], 4),
            "borderline": result.borderline,
            "notes": "; ".join(result.notes)}


def series_row(study, chosen) -> dict:
    """The CSV columns of the DICOM series read (empty for other scans)."""
    from core.data import dicom_header

    if chosen is None:
        return {}
    summary = dicom_header.header_summary(chosen)
    return {"series": f"{chosen.index}/{len(study.series)}", "series_description": summary["series_description"],
            "kernel": summary["kernel"], "slice_thickness_mm": summary["slice_thickness_mm"],
            "study_date": summary["study_date"], "scanner": f"{summary['manufacturer']} {summary['model']}".strip()}


def series_lines(study) -> list[str]:
    """The `series` command's lines: a comment, then one line per series, its text quoted."""
    from core.data.dicom_header import quoted

    lines = [f"# {len(study.series)} series in {quoted(study.name)}; * = preselected for the lungs"]
    for item in study.series:
        thickness = "?" if item.thickness is None else f"{item.thickness:g}"
        mark = "*" if item is study.preselected else ""
        lines.append(f"{item.index}{mark}\t{quoted(item.uid)}\t{quoted(item.description)}\tkernel "
                     f"{quoted(item.kernel)}\t{thickness} mm\t{item.orientation}\t{quoted(item.image_type)}\t"
                     f"{item.images} images")
    return lines


def cmd_series(args) -> int:
    from core.cli.common import EXIT_BAD_INPUT, shown
    from core.data import dicom_study

    try:
        study = dicom_study.open_study(args.study)
    except (ValueError, OSError) as error:  # ImageReadError names the file
        print(f"error: {shown(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if study.archive is not None:
        study.archive.close()
    for note in study.notes:
        print(f"note: {shown(note)}", file=sys.stderr)
    if not study.series:
        print(f"error: {shown(study.name)}: no DICOM image in it", file=sys.stderr)
        return EXIT_BAD_INPUT
    print("\n".join(series_lines(study)))
    return 0


def result_line(row: dict) -> str:
    """Tab-separated fields, names escaped (core.cli.common.shown): one scan, one line."""
    from core.cli.common import shown
    from core.data.dicom_header import quoted

    probability = "n/a" if row["probability"] is None else f"{row['probability']:.4f}"
    top = [] if row["most_suspicious"] is None else \
        [f"most suspicious: {row['most_suspicious']} ({row['most_suspicious_probability']:.4f})"]
    fields = [row["scan"], f"{row['slices_read']} slices read, {row['slices_scored']} scored", probability,
              row["decision"] + (" (borderline)" if row["borderline"] else ""), *top]
    if row.get("series"):
        fields.append(f"series {row['series']} {quoted(row['series_description'])}, kernel {quoted(row['kernel'])}")
    return "\t".join(map(shown, fields))


def cmd_predict_scan(args) -> int:
    import pandas as pd

    from core.base import files
    from core.data import dicom_study
    from core.inference import scan_decision
    from core.inference import site_store
    from core.cli.common import EXIT_BAD_INPUT, run_dir_for, shown
    from core.inference.predict import Predictor

    if bool(args.pacs) == bool(args.scans) or bool(args.pacs) != bool(args.study):
        raise ValueError("predict-scan takes scan files, or --pacs URL with --study UID")
    if args.send_back and not args.pacs:  # --series picks a series of a study file or of a PACS study
        raise ValueError("--send-back goes with --pacs URL --study UID")
    run_dir = run_dir_for(args.run)
    predictor = Predictor.from_run(run_dir, site=args.site)
    # A site's slices are calibrated by its profile: its scan threshold is on that scale too.
    settings = site_store.scan_settings(run_dir, args.site) if args.site else scan_decision.settings_for_run(run_dir)
    if args.site:
        print(f"calibration and thresholds: site profile {args.site}", file=sys.stderr)
    if settings.get("caveat"):
        print(f"warning: {shown(settings['caveat'])}", file=sys.stderr)
    rows, failures = [], 0
    if args.pacs:  # one study's scan from a PACS, printed as a file's is; its result stored back if asked
        from core.cli.pacs import scored_from_pacs, send_back

        result, source, fetched = scored_from_pacs(args.pacs, args.study, args.series, predictor, settings)
        log_scan(run_dir, f"series {source.SeriesInstanceUID}", fetched, result, args.keep_images)
        rows.append(result_row(result))
        print(result_line(rows[-1]), flush=True)
        if args.send_back:
            send_back(args.pacs, args.study, predictor, result, source, run_dir.name)
    for path in args.scans:
        try:
            read, study, chosen = dicom_study.read_scan(path, args.series)
        except (ValueError, OSError) as error:  # ImageReadError names the file
            print(f"error: {shown(error)}", file=sys.stderr)
            failures += 1
            continue
        result = scan_decision.score_scan(predictor, read, settings)
        log_scan(run_dir, Path(path).name, scan_inputs(path), result, args.keep_images)  # docs/records.md
        row = {**result_row(result), **series_row(study, chosen)}
        rows.append(row)
        print(result_line(row), flush=True)
    if args.csv:
        files.write_csv(args.csv, pd.DataFrame(rows, columns=CSV_COLUMNS, dtype=object))  # names as they are
    return EXIT_BAD_INPUT if failures else 0
