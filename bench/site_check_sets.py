"""Site check (core.inference.site_check) of a run on its own test split and on the external sets.

    python bench/site_check_sets.py [--run RUN_ID] [--draws 20] [--external DIR ...]

Prints one row per set: patients, slices, verdict, the classifier test's
ROC-AUC and p-value (the decision; "slight": significant, ROC-AUC below
site_check.MIN_AUC), MMD's p-value, the guard's refusal rate,
the mean calibrated probability and the KS statistic against validation.
Sets: the run's test split (patients from the dataset's metadata), its
COVID and NonCOVID patients alone (a site that sends one class only), each
--external folder (default: SY575 and COVID-CT-MD-sample); then --draws
random sites of 4, 6 and 10 test patients each, to count how often a small
site from the model's own source is called "different" (the false alarms a
hospital with few patients would see). Test patients have about 2 slices
each, so for these draws the minimum of slices is lifted.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.inference import deploy
from core.base import paths
from core.base import files
from core.runs import storage
from core.inference import site_features
from core.inference import site_check
from core.runs import dataset  # noqa: E402
from core.runs.train_config import TrainConfig  # noqa: E402
from core.inference.predict import Predictor  # noqa: E402

EXTERNAL = [paths.SHARED / "data" / "external" / name for name in ("SY575-COVID19-CT", "COVID-CT-MD-sample")]


def row(name: str, result: dict) -> str:
    test, mmd = result["classifier"], result["mmd"]
    guard, shift = result.get("guard"), result.get("probabilities")
    verdict = "slight" if result.get("slight") else result["verdict"]
    return (f"{name:<28} {result['site']['patients']:>4} {result['site']['slices']:>5}  {verdict:<10}"
            + (f" {test['roc_auc']:.3f}  {test['p_value']:.3f}  {mmd['p_value']:.3f}" if test else " " * 21)
            + (f"  {guard['rate']:6.1%}" if guard else "       -")
            + (f"  {shift['site_mean']:.3f}  {shift['ks']:.3f}" if shift else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run id (default: the deployed model)")
    parser.add_argument("--draws", type=int, default=20, help="random small sites drawn from the test split")
    parser.add_argument("--external", nargs="*", default=[str(p) for p in EXTERNAL])
    args = parser.parse_args()

    run_dir = storage.run_path(args.run) if args.run else deploy.deployed_run_dir()
    predictor = Predictor.from_run(run_dir)
    validation = site_features.reference(predictor)
    index = dataset.run_index(TrainConfig.from_dict(files.read_json(run_dir / "config.json", {})))
    test = index[index["split"] == "test"].reset_index(drop=True)
    scored = site_features.score(predictor, test["path"].tolist(), test["relpath"].tolist())
    features, raw = scored["features"], scored["raw"]
    patients = test["patient_id"].astype(str).to_numpy()
    print(f"run {run_dir.name}: validation {len(validation['raw'])} slices of "
          f"{len(set(validation['patients']))} patients")
    print(f"{'set':<28} {'pat':>4} {'slice':>5}  {'verdict':<10} {'AUC':>5}  {'p':>5}  {'MMD p':>5}  {'guard':>6}"
          f"  {'mean p':>6}  {'KS':>5}")

    def compare(name, rows):
        result = site_check.compare_features(features[rows], validation["features"], patients[rows],
                                             validation["patients"])
        result["guard"] = {"rate": float(scored["refused"][rows].mean())}
        calibrated = predictor.calibration.apply
        from scipy.stats import ks_2samp
        result["probabilities"] = {"site_mean": float(calibrated(raw[rows]).mean()),
                                   "ks": float(ks_2samp(raw[rows], validation["raw"]).statistic)}
        print(row(name, result), flush=True)
        return result

    compare("COVID-CT test split", np.ones(len(test), bool))
    compare("COVID-CT test, COVID only", (test["y"] == 1).to_numpy())
    compare("COVID-CT test, NonCOVID only", (test["y"] == 0).to_numpy())
    for folder in args.external:
        print(row(Path(folder).name, site_check.check_folder(run_dir, folder, predictor=predictor)), flush=True)

    rng = np.random.default_rng(0)
    unique = np.unique(patients)
    site_check.MIN_SLICES = 1
    for size in (4, 6, 10):
        verdicts = []
        for draw in range(args.draws):
            chosen = rng.choice(unique, size=size, replace=False)
            rows = np.isin(patients, chosen)
            result = site_check.compare_features(features[rows], validation["features"], patients[rows],
                                                 validation["patients"], seed=draw)
            verdicts.append("slight" if result["slight"] else result["verdict"])
        counts = {v: verdicts.count(v) for v in sorted(set(verdicts))}
        print(f"{args.draws} random sites of {size} test patients: {counts}", flush=True)


if __name__ == "__main__":
    main()
