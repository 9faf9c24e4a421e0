"""How often the duplicate audit cries wolf: precision and recall on a set with known duplicates.

    python bench/audit_precision.py [--originals 150] [--copies 60] [--seed 0]

Builds, in a temporary folder, a set of real CT slices with known
duplicates mixed in: `--originals` slices drawn from COVID-CT, plus all 48
slices of SY575 (4 patients, neighbouring slices of one patient: the
hardest look-alikes), and `--copies` copies of some of them, each made one
way: re-encoded as JPEG (quality 70), resized to 60%, cropped by 6% on every
side, or made 10% brighter. Every pair is put across splits, so the audit
reports every pair it takes for a duplicate. Prints, at the 64-bit pHash
stage (the candidates) and after the 256-bit confirmation (what the audit
reports): pairs flagged, true pairs among them, precision and recall; and
the fine distances of true and false candidates (the margin the
confirmation threshold sits in). docs/duplicate-audit.md quotes the output.
"""
import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core.data import audit
from core.data import datasets
from core.data import near_duplicates
from core.base import paths  # noqa: E402

EXTERNAL = paths.SHARED / "data" / "external" / "SY575-COVID19-CT"


def copy_of(image: Image.Image, how: str) -> tuple[bytes, str]:
    """(file bytes, extension) of a changed copy of a slice."""
    buffer = io.BytesIO()
    if how == "jpeg":
        image.convert("RGB").save(buffer, "JPEG", quality=70)
        return buffer.getvalue(), "jpg"
    if how == "resized":
        image = image.resize((round(image.width * 0.6), round(image.height * 0.6)), Image.BILINEAR)
    elif how == "cropped":
        dx, dy = round(image.width * 0.06), round(image.height * 0.06)
        image = image.crop((dx, dy, image.width - dx, image.height - dy))
    elif how == "brighter":
        image = ImageEnhance.Brightness(image.convert("RGB")).enhance(1.1)
    image.save(buffer, "PNG")
    return buffer.getvalue(), "png"


def build_set(folder: Path, originals: int, copies: int, seed: int) -> tuple[pd.DataFrame, set]:
    rng = np.random.default_rng(seed)
    covid_ct = datasets.index_dataset(paths.data_dir())
    chosen = covid_ct.iloc[rng.choice(len(covid_ct), originals, replace=False)]
    sources = [Path(p) for p in chosen["path"]] + sorted(p for p in EXTERNAL.rglob("*") if p.suffix == ".png")
    rows, truth = [], set()
    for i, source in enumerate(sources):
        target = folder / f"{i:04d}{source.suffix}"
        target.write_bytes(source.read_bytes())
        rows.append(target)
    ways = ("jpeg", "resized", "cropped", "brighter")
    for k, i in enumerate(rng.choice(len(sources), copies, replace=False)):
        content, extension = copy_of(Image.open(sources[i]), ways[k % len(ways)])
        target = folder / f"{i:04d}-copy-{ways[k % len(ways)]}.{extension}"
        target.write_bytes(content)
        rows.append(target)
        truth.add(tuple(sorted((f"{i:04d}{sources[i].suffix}", target.name))))
    index = pd.DataFrame({"path": [str(p) for p in rows], "relpath": [p.name for p in rows],
                          "label": "X", "split": [p.name for p in rows]})  # every pair crosses a split
    return index, truth


def score(flagged: set, truth: set) -> str:
    hits = len(flagged & truth)
    precision = hits / len(flagged) if flagged else float("nan")
    return (f"{len(flagged)} pairs flagged, {hits} true: precision {precision:.3f}, "
            f"recall {hits / len(truth):.3f} ({hits} of {len(truth)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--originals", type=int, default=150)
    parser.add_argument("--copies", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-distance", type=int, default=audit.MAX_DISTANCE, help="of the 64-bit candidate stage")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        index, truth = build_set(Path(folder), args.originals, args.copies, args.seed)
        index = index.sort_values("relpath", ignore_index=True)
        names = index["relpath"].to_numpy()
        _, codes, fine_codes = audit._hash_images(index)
        a, b, _ = near_duplicates.hamming_pairs(codes, args.max_distance)
        candidates = {tuple(sorted((names[i], names[j]))) for i, j in zip(a, b)}
        reported = audit.audit_duplicates(index, max_distance=args.max_distance)
        confirmed = {tuple(sorted(pair)) for pair in reported[["relpath_a", "relpath_b"]].to_numpy()}
        fine = {tuple(sorted((names[i], names[j]))): bits
                for i, j, bits in zip(a, b, audit.fine_distances(fine_codes, a, b))}
    print(f"{len(index)} slices ({args.originals} from COVID-CT, 48 from SY575, {args.copies} copies), "
          f"{len(truth)} true duplicate pairs")
    print(f"64-bit pHash <= {args.max_distance} (candidates): {score(candidates, truth)}")
    print(f"confirmed, 256-bit lung pHash <= {audit.FINE_MAX_DISTANCE}: {score(confirmed, truth)}")
    true_fine = sorted(int(d) for pair, d in fine.items() if pair in truth)
    false_fine = sorted(int(d) for pair, d in fine.items() if pair not in truth)
    print(f"fine distance of true candidates: max {max(true_fine, default='-')} ({true_fine})")
    print(f"fine distance of false candidates: min {min(false_fine, default='-')} "
          f"(lowest ten {false_fine[:10]})")
    missed = sorted(truth - candidates)
    if missed:
        print("true pairs the 64-bit stage missed: " + ", ".join(" ~ ".join(pair) for pair in missed))


if __name__ == "__main__":
    main()
