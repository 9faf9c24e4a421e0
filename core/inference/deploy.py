"""The deployed model: the one run whose model answers on Predict and in
`python -m core predict`, chosen on purpose, never "whichever run is newest".

artifacts/deployed.json names it (written atomically). A run that was trained
on a subset, did not complete, or is below the quality floor (FLOOR) can only
be deployed with a confirmation, and the refusal says why. Deploying also
builds the run's out-of-distribution reference (core.inference.ood), its calibration
(core.inference.calibration) and its scan-level aggregation and threshold (core.inference.scan_decision),
so that the deployed model never answers unguarded.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from core.base import paths
from core.runs import catalogue, checks
from core.base import files
from core.runs import storage
from core.runs.schemas import DEPLOYED as FILE
MIN_TEST_IMAGES = 50
# The quality floor: a model whose test ROC-AUC could be chance (the lower end of its
# 95% bootstrap CI at or below 0.5), or that was tested on too few slices to know.
FLOOR = (f"test ROC-AUC's 95% CI must lie above 0.5, on at least {MIN_TEST_IMAGES} test slices")


class DeployRefused(ValueError):
    """The run is not fit to answer; `reasons` says why (force=True deploys it anyway)."""

    def __init__(self, run_id: str, reasons: list[str]):
        self.reasons = reasons
        super().__init__(f"run {run_id} not deployed: {'; '.join(reasons)} "
                         "(deploy it anyway with --force / the confirmation box)")


def deployed_file() -> Path:
    return paths.artifacts_dir() / FILE


def test_figures(run: dict) -> dict:
    """The run's test metrics at its validation-chosen threshold ({} when it has none)."""
    return ((run["metrics"] or {}).get("test") or {}).get("at_threshold") or {}


def problems(run: dict) -> list[str]:
    """Why `run` should not answer for clinicians; [] when it may."""
    found = [f"it is damaged ({run['problems'][0]})"] if run.get("problems") else []
    state = run["status"].get("state")
    if state != "completed":
        found.append(f"it is {state}, not completed")
    elif not storage.has_model(run["path"]):
        found.append("it has no model.keras")
    subset = run["config"].get("max_images_per_split") or 0
    if subset:
        found.append(f"it was trained on a subset ({subset} images per split)")
    test = test_figures(run)
    if state == "completed" and not test:
        found.append("it has no test results")
    elif test:
        low = (test.get("ci") or {}).get("roc_auc", [None])[0]
        if test.get("n", 0) < MIN_TEST_IMAGES:
            found.append(f"its test set has {test.get('n', 0)} slices, fewer than {MIN_TEST_IMAGES}")
        if low is None or low <= 0.5:
            low_text = "unknown" if low is None else f"{low:.2f}"
            found.append(f"its test ROC-AUC could be chance (95% CI lower bound {low_text} ≤ 0.5)")
    return found


def deploy(run_id: str, force: bool = False, report=lambda line: None) -> dict:
    """Make `run_id` the deployed model; raises DeployRefused (naming why) for
    a run with problems unless `force`, and DamagedRun for a damaged run
    whatever `force` says, before anything is written into it. Builds its
    calibration and out-of-distribution reference first. Returns the record written."""
    from core.inference import calibration, ood, pair, scan_decision
    from core.inference.predict import Predictor

    run_dir = storage.run_path(run_id)
    if not run_dir.is_dir():
        raise ValueError(f"run {run_id!r} not found in {run_dir.parent}")
    checks.require_intact(run_dir)  # validated before anything is written into it
    run = catalogue.load_run(run_dir)
    members = pair.members_of(run_dir) or ()
    # A pair answers through both members: what is wrong with either is wrong with it.
    found = problems(run) + [f"member {m.name}: {p}" for m in members for p in problems(catalogue.load_run(m))]
    if found and not force:
        raise DeployRefused(run_id, found)
    if not storage.has_model(run_dir):
        raise ValueError(f"run {run_id} has no model.keras: nothing to deploy")
    calibration.for_run(run_dir)
    report("choosing the scan-level aggregation and threshold on the validation patients…")
    scan_decision.settings_for_run(run_dir)
    report("building the out-of-distribution reference (features of the training slices)…")
    for guarded in members or (run_dir,):  # a pair is guarded by each member's own reference
        ood.build_reference(Predictor.from_run(guarded), report)
    record = {"run": run_id, "deployed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "confirmed_despite": found}
    files.write_json(deployed_file(), record)
    return record


def deploy_pair(first: str, second: str, force: bool = False, report=lambda line: None) -> dict:
    """Make a pair of two runs (core.inference.pair) and deploy it as one model; the pair's
    own problems and each member's are checked as deploy checks a run's."""
    from core.inference import pair

    pair_dir = pair.make_pair(storage.run_path(first), storage.run_path(second))
    report(f"pair {pair_dir.name}: the mean of {first} and {second}, threshold chosen on validation")
    return deploy(pair_dir.name, force=force, report=report)


def deployed_record() -> dict | None:
    """deployed.json, None when nothing is deployed; DamagedRun naming the file
    and field when it fails its schema (core.runs.schemas)."""
    return checks.read_valid(deployed_file())


def deployed_run() -> dict | None:
    """The deployed run (catalogue.load_run), None when none is deployed, it is
    gone, or deployed.json is damaged (deployed_run_dir says why)."""
    try:
        record = deployed_record()
    except ValueError:
        return None
    if not record:
        return None
    run_dir = storage.run_path(record["run"])  # a valid run id: its schema checked it
    if not storage.has_model(run_dir):
        return None
    return catalogue.load_run(run_dir)


def deployed_run_dir() -> Path:
    """The deployed run's folder (the CLI's default), or a ValueError saying how to deploy one."""
    record = deployed_record()  # a damaged deployed.json: its reason, not "none deployed"
    run = deployed_run()
    if run is None:
        gone = f" (run {record['run']} is gone)" if record and record.get("run") else ""
        raise ValueError(f"no model deployed{gone}: choose one with python -m core deploy RUN "
                         "(python -m core runs lists them), or give --run RUN")
    return run["path"]


def best_run(all_runs: list[dict]) -> dict | None:
    """The deployable run with the best validation ROC-AUC (test is for
    reporting, not choosing), None when no run is fit to deploy."""
    fit = [run for run in all_runs if not problems(run)]

    def val_auc(run):
        return (((run["metrics"] or {}).get("val") or {}).get("at_threshold") or {}).get("roc_auc") or 0.0

    return max(fit, key=val_auc, default=None)


def for_comparison(run: dict) -> bool:
    """Runs that belong in comparison tables by default: completed on the full data."""
    return run["status"].get("state") == "completed" and not run["config"].get("max_images_per_split")
