"""A newcomer's first model: Home's one button trains the Fast recipe (the
default recipe at 160 px with at most 10 fine-tuning epochs: a first answer
within about 10 minutes, below the default's quality) in the background,
and the same background process deploys the run when it passes the quality
floor (core.inference.deploy.FLOOR), so Predict answers
without a visit to Train or Evaluate, and whether or not the tab stays open.

The run is an ordinary run named FIRST_MODEL (its id ends with it); what
Home shows is read from its folder and deployed.json, never from the tab.
$COVIDCT_FIRST_MODEL_RECIPE (a JSON object of TrainConfig settings) changes
the recipe: the browser test and bench/first_prediction.py use it for a tiny
recipe that still trains on every image, so that it can pass the floor.
"""
from __future__ import annotations

import dataclasses
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from core.inference import deploy
from core.jobs import background
from core.runs import catalogue, lock, storage
from core.runs.promoted import load_default_config
from core.runs.train_config import TrainConfig
from core.training import presets

FIRST_MODEL = "first-model"
RECIPE_VARIABLE = "COVIDCT_FIRST_MODEL_RECIPE"


def recipe():
    """The TrainConfig a first model trains with: the default recipe (a search's promoted
    best, if one was promoted) with the Fast recipe's changes, then $COVIDCT_FIRST_MODEL_RECIPE's."""
    changes = os.environ.get(RECIPE_VARIABLE, "").strip()
    try:
        changes = dict(json.loads(changes)) if changes else {}
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise ValueError(f"${RECIPE_VARIABLE} must be a JSON object of settings: {error}") from None
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(load_default_config())})
    if unknown:
        raise ValueError(f"${RECIPE_VARIABLE} names unknown settings: {', '.join(unknown)}")
    return dataclasses.replace(load_default_config(), **{**presets.FAST_CHANGES, **changes}).validate()


def start(runs_root=None) -> Path:
    """Launch the first model's training, deployed by its own process when fit
    (background.launch_training); TrainingBusy while another training is alive."""
    os.environ["PYTHONUNBUFFERED"] = "1"  # the run's log gets each line when it is printed
    lock.refuse_if_training(runs_root)
    return background.launch_training(recipe(), name=FIRST_MODEL, runs_root=runs_root, deploy_when_fit=True)


def latest(all_runs: list[dict]) -> dict | None:
    """The newest first-model run among `all_runs` (catalogue.list_runs: newest first)."""
    return next((run for run in all_runs if run["id"].endswith(f"-{FIRST_MODEL}")), None)


def deploy_when_fit(run_dir, report=print) -> list[str]:
    """Deploy the finished run unless it misses the quality floor (or another
    model was deployed meanwhile, on purpose: it stays); returns why it was
    not deployed, [] when it was. Called by the run's own process after training."""
    run = catalogue.load_run(run_dir)
    found = deploy.problems(run)
    if not found and deploy.deployed_run() is not None:
        found = [f"run {deploy.deployed_record()['run']} was deployed while it trained, and stays"]
    if found:
        report(f"not deployed: {'; '.join(found)}")
        return found
    deploy.deploy(run["id"], report=report)
    report(f"deployed: run {run['id']} answers on Predict")
    return []


def epochs_done(status: dict, config) -> float:
    """Training epochs done, fractions of the current one included, over both phases."""
    epoch, batch, steps = status.get("epoch") or 0, status.get("batch") or 0, status.get("steps") or 0
    current = max(epoch - 1, 0) + (batch / steps if steps else 0.0)
    if status.get("phase") == "finetune":
        return config.head_epochs + current
    if status.get("phase") == "head":
        return current
    return 0.0


def progress(run: dict, n_train: int, now: datetime | None = None) -> dict:
    """How far the run's training is: {"fraction" of its epochs, "elapsed" and
    "remaining" seconds}. The remaining time is the estimate
    (presets.estimate, the Train page's figure) less the time spent, and never
    less than the epochs left at the estimate's pace: early stopping can end it sooner."""
    config = TrainConfig.from_dict(run["config"])
    cost = presets.estimate(config, n_train)
    epochs = config.head_epochs + (config.finetune_epochs if config.train_from != "head" else 0)
    done = min(epochs_done(run["status"], config), epochs)
    started = datetime.fromisoformat(run["status"].get("started_at") or storage.now())
    elapsed = ((now or datetime.now(UTC)) - started).total_seconds()
    per_epoch = (cost["minutes"] - presets.OVERHEAD_MINUTES) * 60 / max(epochs, 1)
    remaining = max(cost["minutes"] * 60 - elapsed, (epochs - done) * per_epoch, 0.0)
    return {"fraction": done / epochs if epochs else 1.0, "elapsed": elapsed, "remaining": remaining,
            "estimate": cost["minutes"]}


def stage(run: dict) -> str:
    """Where the first model is: "training", "deploying" (trained; its process
    is preparing it for Predict), "deployed", "not deployed" (finished, and
    missing the floor or another model answers), or the run's own end state
    ("failed", "cancelled", "interrupted")."""
    status = storage.live_state(dict(run["status"]))
    state = status.get("state")
    if state == "running":
        return "training"
    if state != "completed":
        return state or "interrupted"
    try:
        deployed = (deploy.deployed_record() or {}).get("run")
    except ValueError:  # a damaged deployed.json names no run
        deployed = None
    if deployed == run["id"]:
        return "deployed"
    if storage.pid_alive(status.get("pid"), status.get("pid_start")):
        return "deploying"
    return "not deployed"
