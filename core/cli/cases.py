"""python -m core cases list | export DIR: the case log (core.inference.case_log),
and how predict and predict-scan write to it."""
from __future__ import annotations

import sys
from pathlib import Path

from core.cli.common import shown

LIST_COLUMNS = ["time", "kind", "file", "probability", "decision", "borderline", "refused", "label", "patient",
                "image_kept", "case"]


def add_parsers(commands) -> None:
    cases = commands.add_parser(
        "cases", help="the case log: every prediction made in the app or by predict / predict-scan",
        description="list: the logged cases, newest first. export DIR: the cases with a stored label and a "
                    "kept image as a site's labelled set (class folders, patient sub-folders, manifest.csv) "
                    "for site-profile, site-check and adapt (docs/records.md).")
    actions = cases.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the logged cases, newest first")
    listing.add_argument("--limit", type=int, default=50, help="at most this many, the newest (default 50)")
    listing.add_argument("--csv", help="also write them, all fields, to this CSV file")
    listing.set_defaults(func=cmd_list)
    export = actions.add_parser("export", help="the labelled cases with kept images as a site's labelled set")
    export.add_argument("out", metavar="DIR", help="a new or empty folder")
    export.set_defaults(func=cmd_export)


def keep_option(parser) -> None:
    """--keep-images for predict and predict-scan; the default is the one setting (paths.keep_case_images)."""
    from core.base import paths

    parser.add_argument("--keep-images", action="store_true", default=paths.keep_case_images(),
                        help="keep each input's image in the case log, so a label stored later can be exported "
                             "(default: only its sha256; $COVIDCT_KEEP_IMAGES=1 turns it on)")


def cmd_list(args) -> int:
    from core.base import files, paths
    from core.inference import case_log

    if args.limit < 1:
        raise ValueError("--limit must be at least 1")
    records, problems = case_log.list_cases(limit=args.limit)
    for problem in problems:
        print(f"skipped: {shown(problem)}", file=sys.stderr)
    table = case_log.case_table(records)
    if table.empty:
        print(f"no cases logged yet in {shown(paths.cases_dir())}")
    else:
        shown_table = table[LIST_COLUMNS].map(lambda cell: shown(cell) if isinstance(cell, str) else cell)
        print(shown_table.to_string(index=False, float_format="%.4f"))
    if args.csv:
        files.write_csv(args.csv, table)
    return 0


def cmd_export(args) -> int:
    from core.inference import case_export

    case_export.export_cases(args.out, report=lambda line: print(shown(line)))
    return 0


def recipe_of_run(run_dir) -> str | None:
    from core.runs import checks
    from core.runs.train_config import recipe_changes

    return recipe_changes(checks.check_run(run_dir)["config"] or {})


def log_slices(run_dir, results, keep: bool) -> None:
    """One case per slice predicted by the CLI; the file is read again (bounded) for its digest."""
    from core.base import files
    from core.data.limits import MAX_FILE_BYTES
    from core.inference import case_log

    recipe = recipe_of_run(run_dir)
    for result in results:
        content = files.read_regular(result.name, MAX_FILE_BYTES)
        inputs = [(Path(result.name).name, content)]
        case_log.log_case(case_log.slice_values(result, run_dir), inputs, Path(result.name).name, "cli", recipe,
                          kept=case_log.slice_image(result) if keep else None)


def scan_inputs(path: str) -> list[tuple[str, bytes]]:
    """A scan file's bytes, or a folder's files in order (bounded): what a scan's digest is over."""
    from core.base import files
    from core.data.limits import MAX_FILE_BYTES, MAX_SCAN_BYTES

    if Path(path).is_dir():
        return [(str(found.relative_to(path)), files.read_regular(found, MAX_FILE_BYTES, inside=path))
                for found, problem in files.files_under(path) if problem is None]
    return [(Path(path).name, files.read_regular(path, MAX_SCAN_BYTES))]


def log_scan(run_dir, name: str, inputs: list[tuple[str, bytes]], result, keep: bool) -> None:
    """One case per scan predicted by the CLI (a file, a folder or a PACS series), its digest over `inputs`."""
    from core.inference import case_log

    case_log.log_case(case_log.scan_values(result, run_dir), inputs, name, "cli", recipe_of_run(run_dir),
                      kept=case_log.scan_images(result) if keep else None)
