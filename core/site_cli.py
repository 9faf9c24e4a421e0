"""python -m core site-check FOLDER and site-profile fit | list | remove:
does a site's data differ from the model's validation data, and the site's
own calibration and threshold (core.site_check, core.site_profile)."""
from __future__ import annotations

import sys


def add_parsers(commands) -> None:
    from core import site_check, site_profile

    check = commands.add_parser(
        "site-check", help="do a site's scans differ from the model's validation scans? (no labels needed)",
        description="Scores every image and DICOM file under FOLDER (one sub-folder per patient, or a "
                    "manifest.csv with path and patient columns) and tests whether, as a group, they differ "
                    "from the run's validation scans in the model's own features: a classifier two-sample "
                    "test over patients with a permutation p-value. Also gives the out-of-distribution "
                    "guard's refusal rate and the shift of the predicted probabilities.")
    check.add_argument("folder", help="the site's scans, searched recursively")
    check.add_argument("--run", help="run id, or 'latest' (default: the deployed model)")
    check.add_argument("--permutations", type=int, default=site_check.N_PERMUTATIONS,
                       help=f"permutations behind the p-value (default {site_check.N_PERMUTATIONS})")
    check.add_argument("--json", help="also write the whole result to this JSON file")
    check.set_defaults(func=cmd_site_check)

    profile = commands.add_parser(
        "site-profile", help="a site's own calibration and threshold, fitted on its labelled scans",
        description="fit NAME DATA...: from a site's labelled slices (one folder per class with patient "
                    "sub-folders, or a manifest.csv with path, label and patient columns), fit the site's "
                    "calibration and threshold, report its figures cross-fitted by patient, and store it "
                    "beside the run as sites/NAME. list: the run's profiles. remove NAME: delete one. "
                    f"A fit needs {site_profile.MIN_PATIENTS} patients, {site_profile.MIN_PATIENTS_PER_CLASS} "
                    "of each class. Use one with predict or predict-scan --site NAME.")
    actions = profile.add_subparsers(dest="action", required=True)
    fit = actions.add_parser("fit", help="fit and store a site profile")
    fit.add_argument("name", help="the profile's name (letters, digits, '.', '_', '-')")
    fit.add_argument("data", nargs="+", help="labelled dataset folders (or manifest CSV files) of the site")
    fit.add_argument("--class-map", help='class folders named otherwise, e.g. "COVID19=COVID,non-COVID19=NonCOVID"')
    fit.add_argument("--replace", action="store_true", help="replace a profile of the same name")
    fit.add_argument("--n-boot", type=int, help="bootstrap resamples behind the CIs (default 1000)")
    listing = actions.add_parser("list", help="the run's site profiles")
    remove = actions.add_parser("remove", help="delete a site profile")
    remove.add_argument("name")
    for parser in (fit, listing, remove):
        parser.add_argument("--run", help="run id, or 'latest' (default: the deployed model)")
    profile.set_defaults(func=cmd_site_profile)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_site_check(args) -> int:
    from core import site_check
    from core.cli import EXIT_BAD_INPUT, _run_dir

    if args.permutations < 1:
        raise ValueError(f"--permutations {args.permutations} must be at least 1")
    files, _ = site_check.site_files(args.folder)  # a wrong folder is refused before TensorFlow loads
    result = site_check.check_folder(_run_dir(args.run), args.folder, n_permutations=args.permutations,
                                     report=_progress)
    for problem in result["problems"]:
        print(f"error: {problem}", file=sys.stderr)
    print(f"run {result['run']}: {len(files) - len(result['problems'])} slices of {args.folder}")
    print(result["message"])
    guard = site_check.guard_message(result)
    if guard:
        print(guard)
    print()
    print(site_check.figures_table(result).to_string(index=False))
    if args.json:
        from core import runs
        runs.write_json(args.json, result)
    return EXIT_BAD_INPUT if result["problems"] else 0


def cmd_site_profile(args) -> int:
    from core import site_profile
    from core.cli import _run_dir

    run_dir = _run_dir(args.run)
    if args.action == "list":
        table = site_profile.profiles_table(run_dir)
        print(table.to_string(index=False) if len(table) else f"run {run_dir.name} has no site profiles")
        return 0
    if args.action == "remove":
        site_profile.remove_profile(run_dir, args.name)
        print(f"removed site profile {args.name} of run {run_dir.name}")
        return 0
    from core import external
    profile = site_profile.fit_profile(run_dir, args.name, args.data,
                                       class_map=external.parse_class_map(args.class_map), replace=args.replace,
                                       n_boot=args.n_boot, report=_progress)
    print(site_profile.summary(profile))
    print()
    print(site_profile.figures_table(profile).to_string(index=False))
    print(f"\nstored as {site_profile.profile_dir(run_dir, args.name)}: use it with --site {args.name}")
    return 0
