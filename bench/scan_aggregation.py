"""Scan-level aggregation compared on patients (docs/scan-level.md).

    python bench/scan_aggregation.py RUN_DIR [--external DIR]

For each aggregation (mean, top-3 mean, noisy-OR): patient-level ROC-AUC
with its bootstrap 95% CI on the run's validation patients (where the
choice is made) and test patients (reported only), then the choice and the
scan threshold. The run's small files are copied to a temporary folder
first, so nothing is written into the run. --external scores a labelled
folder with patient sub-folders (e.g. SY575, 4 patients) as a smoke check:
an external set never picks the method.
"""
import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.inference import calibration
from core.inference import external
from core.data import images
from core.evaluation import patient_level
from core.inference import scan_decision  # noqa: E402


def external_frame(run_dir: Path, data_dir: str) -> pd.DataFrame:
    """Calibrated slice probabilities of a labelled folder, with its patients."""
    from core.inference.predict import Predictor

    predictor = Predictor.from_run(run_dir)
    index = external.index_external(data_dir, predictor.negative_class, predictor.positive_class)
    slices = [images.load_image(path) for path in index["path"]]
    probabilities = [p.probability for p in predictor.predict_images(slices, list(index["relpath"]))]
    return pd.DataFrame({"path": index["relpath"], "y_true": index["y"], "prob": probabilities,
                         "split": "external", "patient_id": index["patient_id"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder")
    parser.add_argument("--external", help="a labelled folder with patient sub-folders (smoke check only)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / Path(args.run).name
        copy.mkdir()
        for name in ("config.json", "metrics.json", "predictions.csv", calibration.FILE):
            if (Path(args.run) / name).exists():
                shutil.copy2(Path(args.run) / name, copy / name)
        frame = scan_decision.patient_frame(copy)
        settings = scan_decision.choose_settings(frame)
    table = pd.DataFrame(settings["comparison"])
    if args.external:
        outside = external_frame(Path(args.run), args.external)
        table = pd.concat([table, scan_decision.compare_aggregations(outside, splits=("external",))])
        patients = patient_level.per_patient(outside, settings["aggregation"])
        right = int(((patients["prob"] >= settings["threshold"]) == patients["y_true"].astype(bool)).sum())
        print(f"external patients decided right at the scan threshold: {right} of {len(patients)} "
              f"({', '.join(f'{p.patient_id} {p.prob:.2f}' for p in patients.itertuples())})")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    test = settings["test_patients"]
    print(f"chosen on validation: {settings['aggregation']}, scan threshold {settings['threshold']:.3f} "
          f"({settings['val_patients']} patients, {settings['val_multi_slice_patients']} with several slices); "
          f"test patients at it: ROC-AUC {test['roc_auc']:.3f}, sensitivity {test['recall']:.3f}, "
          f"specificity {test['specificity']:.3f} ({test['n']} patients)")


if __name__ == "__main__":
    main()
