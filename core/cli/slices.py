"""python -m core predict | explain: single slices, one line each.

A line is tab-separated fields, each name escaped (core.cli.common.shown) so
that one input is always one line whatever its name holds; --csv is the
machine-readable form, with names as they are.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

from core.cli import cases
from core.cli.common import (ALPHA, EXIT_BAD_INPUT, PREDICT_BATCH, PROGRESS_FROM, image_files, in_range, run_dir_for,
                             shown)


def add_parsers(commands) -> None:
    predict = commands.add_parser(
        "predict", help="calibrated probability of the positive class for slices (PNG, JPEG, DICOM)",
        description="Prints path, probability, decision (or 'refused' for a slice not like the training "
                    "slices) per slice, in batches, with a progress bar on stderr from 20 files on.")
    predict.add_argument("images", nargs="+", help="files, folders (every image inside) or quoted glob patterns")
    predict.add_argument("--run", help="run id, or 'latest' (default: the deployed model)")
    predict.add_argument("--batch-size", type=in_range(int, PREDICT_BATCH), default=32,
                         help=f"slices per model call, {PREDICT_BATCH} (default 32)")
    predict.add_argument("--csv", help="also write path, probability, decision, ood, reason to this CSV file")
    predict.add_argument("--site", help="calibrate and decide with this site profile (site-profile list)")
    cases.keep_option(predict)
    predict.set_defaults(func=cmd_predict)

    explain = commands.add_parser("explain", help="save a Grad-CAM overlay for one slice")
    explain.add_argument("image")
    explain.add_argument("--run", help="run id, or 'latest' (default: the deployed model)")
    explain.add_argument("--method", choices=("gradcam", "gradcam++"), default="gradcam")
    explain.add_argument("--alpha", type=in_range(float, ALPHA), default=0.4, help=f"heatmap opacity, {ALPHA}")
    explain.add_argument("--out", default="gradcam.png")
    explain.set_defaults(func=cmd_explain)


def cmd_predict(args) -> int:
    import pandas as pd
    from tqdm import tqdm

    from core.base import files
    from core.data.images import load_image
    from core.data.limits import ImageReadError

    paths, failures = image_files(args.images, report=lambda line: print(f"error: {shown(line)}", file=sys.stderr))
    # TensorFlow only now: a mistyped path is refused at once, without its start-up lines on stderr.
    from core.inference.predict import Predictor
    run_dir = run_dir_for(args.run)
    predictor = Predictor.from_run(run_dir, site=args.site)
    if predictor.site:
        print(f"calibration and threshold: site profile {shown(predictor.site)}", file=sys.stderr)
    rows = []
    with tqdm(total=len(paths), unit="slice", file=sys.stderr, disable=len(paths) < PROGRESS_FROM) as progress:
        for start in range(0, len(paths), args.batch_size):
            images, names = [], []
            for path in paths[start:start + args.batch_size]:  # decode a batch, then one model call
                try:
                    images.append(load_image(path))
                    names.append(path)
                except (ImageReadError, OSError) as error:
                    progress.write(f"error: {shown(error)}", file=sys.stderr)
                    failures += 1
            results = predictor.predict_images(images, names)
            cases.log_slices(run_dir, results, args.keep_images)  # every answer keeps a record (docs/records.md)
            for result in results:
                decision = "refused" if result.refused else result.label
                rows.append({"path": result.name, "probability": round(result.probability, 4),
                             "decision": decision, "ood": result.refused,
                             "reason": "; ".join(result.ood_problems)})
                fields = [result.name, f"{result.probability:.4f}", decision] + \
                    ([refusal_note(result)] if result.refused else [])
                progress.write("\t".join(map(shown, fields)), file=sys.stdout)
            progress.update(len(paths[start:start + args.batch_size]))
    if args.csv:
        # object: a file name's bytes that are not UTF-8 stay as they are, written back by write_csv
        files.write_csv(args.csv, pd.DataFrame(rows, columns=["path", "probability", "decision", "ood", "reason"],
                                               dtype=object))
    return EXIT_BAD_INPUT if failures else 0


def refusal_note(result) -> str:
    from core.inference.ood import REFUSAL

    return f"{REFUSAL}: {'; '.join(result.ood_problems)}"


def cmd_explain(args) -> int:
    from PIL import Image

    from core.base import files
    from core.data.images import load_image
    from core.inference.predict import Predictor

    image_format = Image.registered_extensions().get(Path(args.out).suffix.lower())
    if image_format is None:
        raise ValueError(f"--out {args.out}: not the name of an image file (.png, .jpg, ...)")
    predictor = Predictor.from_run(run_dir_for(args.run))
    image = load_image(args.image)
    result = predictor.predict_images([image], [Path(args.image).name])[0]
    # The map explains the decision: evidence for the class it chose.
    picture = predictor.gradcam_overlay(image, method=args.method, alpha=args.alpha, class_index=result.class_index)
    encoded = io.BytesIO()
    Image.fromarray(picture).save(encoded, format=image_format)
    files.write_bytes(args.out, encoded.getvalue())  # whole or not at all, and never into a FIFO left there
    print("\t".join(map(shown, [args.image, f"{result.probability:.4f}", result.label,
                                f"{args.method} overlay (evidence for {result.label}) -> {args.out}"])))
    if result.refused:
        print(f"warning: {shown(refusal_note(result))}", file=sys.stderr)
    return 0
