"""What docs/trust.md quotes: calibration and the out-of-distribution guard of a deployed run.

    python bench/trust.py [--run RUN_ID]

Prints, for the deployed run (or RUN_ID, which must have been deployed once,
so that its guard exists):
- the calibration chosen on validation, its cross-validated log losses, the
  threshold and borderline band, and the test ECE before and after;
- the guard's refusals (with the reason: image check or feature distance) on
  COVID-CT's test split, on the external SY575 set, and on inputs that are
  not chest-CT slices: photos (scikit-learn's two sample photos, in colour and
  in grey, and synthetic noise and gradients) and non-lung DICOM from
  pydicom's test files (a soft-tissue CT crop, a brain MR, a liver CT).
Uses $COVIDCT_ARTIFACTS (default ./artifacts).
"""
import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core.inference import calibration
from core.inference import deploy
from core.base import paths
from core.base import files
from core.runs import storage  # noqa: E402
from core.inference.predict import Predictor  # noqa: E402
from core.data.images import IMAGE_EXTENSIONS, load_image  # noqa: E402

EXTERNAL = paths.SHARED / "data" / "external" / "SY575-COVID19-CT"


def not_ct_inputs() -> dict:
    """name -> uint8 H x W x 3 image: photos, synthetic pictures, non-lung DICOM slices."""
    import pydicom.data
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng(0)
    inputs = {}
    for name in ("china.jpg", "flower.jpg"):
        photo = load_sample_image(name)
        inputs[f"photo {name}"] = photo
        grey = photo.mean(axis=2).astype(np.uint8)
        inputs[f"photo {name}, grey"] = np.repeat(grey[..., None], 3, axis=2)
    ramp = np.tile(np.linspace(0, 255, 320).astype(np.uint8), (320, 1))
    inputs["grey gradient"] = np.repeat(ramp[..., None], 3, axis=2)
    inputs["grey noise"] = np.repeat(rng.integers(0, 256, (320, 320, 1), dtype=np.uint8), 3, axis=2)
    inputs["colour noise"] = rng.integers(0, 256, (320, 320, 3), dtype=np.uint8)
    inputs["black"] = np.zeros((320, 320, 3), np.uint8)
    disc = (np.hypot(*np.mgrid[-160:160, -160:160]) < 120).astype(np.uint8) * 200
    inputs["white disc on black"] = np.repeat(disc[..., None], 3, axis=2)
    for name in ("CT_small.dcm", "MR_small.dcm", "liver_1frame.dcm"):
        inputs[f"DICOM {name}"] = load_image(pydicom.data.get_testdata_file(name))
    return inputs


def refusals(predictor: Predictor, images: list, names: list, batch: int = 32) -> list:
    results = []
    for start in range(0, len(images), batch):
        results += predictor.predict_images(images[start:start + batch], names[start:start + batch])
    return results


def report_set(title: str, results: list) -> None:
    refused = [r for r in results if r.refused]
    by_image = sum(any("colour" in p or "too small" in p for p in r.ood_problems) for r in refused)
    print(f"{title}: {len(refused)} of {len(results)} refused ({len(refused) / max(len(results), 1):.1%}); "
          f"{by_image} by the image checks, {len(refused) - by_image} by the feature distance only")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run id (default: the deployed model)")
    args = parser.parse_args()
    run_dir = storage.run_path(args.run) if args.run else deploy.deployed_run_dir()
    predictor = Predictor.from_run(run_dir)
    if predictor.guard is None:
        sys.exit(f"run {run_dir.name} has no out-of-distribution reference: deploy it first")

    fitted = calibration.for_run(run_dir)
    print(f"run {run_dir.name}: calibration {fitted.method} (a {fitted.a:.3f}, b {fitted.b:.3f}) on "
          f"{fitted.n_val} validation predictions; cross-validated log loss "
          + ", ".join(f"{m} {v:.3f}" for m, v in fitted.cv_log_loss.items()))
    low, high = fitted.borderline
    print(f"threshold {fitted.raw_threshold:.3f} raw = {fitted.threshold:.3f} calibrated; borderline band "
          f"{low:.3f}-{high:.3f} (raw {fitted.borderline_raw[0]:.3f}-{fitted.borderline_raw[1]:.3f})")
    print(f"test ECE ({fitted.test_ece['n']} scans, 10 bins): before {fitted.test_ece['before']:.3f}, "
          f"after {fitted.test_ece['after']:.3f}")
    predictions = storage.read_predictions(run_dir)
    raw = predictions.prob.to_numpy()
    same = np.array_equal(raw >= fitted.raw_threshold, fitted.apply(raw) >= fitted.threshold)
    print(f"decisions identical on all {len(raw)} val + test predictions: {same}")
    test = predictions[predictions.split == "test"]
    shown = fitted.apply(test.prob)
    borderline = (shown >= low) & (shown <= high)
    print(f"test scans in the borderline band: {int(borderline.sum())} of {len(test)}; accuracy inside "
          f"{np.mean((shown[borderline] >= fitted.threshold) == test.y_true[borderline]):.2f}, outside "
          f"{np.mean((shown[~borderline] >= fitted.threshold) == test.y_true[~borderline]):.2f}")

    summary = files.read_json(run_dir / "ood.json")
    print(f"\nguard: k={summary['k']} nearest training scans, threshold {summary['threshold']:.4f} "
          f"({summary['percentile']:g}th percentile of {summary['n_val']} validation distances)")
    root = Path(files.read_json(run_dir / "config.json")["data_dir"])
    test_files = [root / p for p in test.path]
    report_set("COVID-CT test", refusals(predictor, [load_image(p) for p in test_files],
                                         [str(p) for p in test_files]))
    external = sorted(p for p in EXTERNAL.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if external:
        results = refusals(predictor, [load_image(p) for p in external], [str(p) for p in external])
        report_set("SY575 (external)", results)
        for r in results:
            if r.refused:
                print(f"  refused: {Path(r.name).relative_to(EXTERNAL)}: {'; '.join(r.ood_problems)}")
    others = not_ct_inputs()
    results = refusals(predictor, list(others.values()), list(others))
    report_set("not chest CT", results)
    for r in results:
        print(f"  {r.name}: {'refused: ' + '; '.join(r.ood_problems) if r.refused else 'ACCEPTED'} "
              f"(P {r.probability:.2f})")


if __name__ == "__main__":
    main()
