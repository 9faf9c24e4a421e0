"""Background work: launching, locking, cancelling and resuming trainings,
searches and external evaluations.

Jobs run as `python -m core ...` in a session of their own, so they outlive
the app's page or tab; the app only reads what they write. One training (a
run, or a search's trials) at a time holds the training lock: the machine has
no cores to spare. A run is cancelled by a file in its folder (checked between
training steps) or by SIGTERM.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from core.base import paths
from core.runs.lock import TrainingBusy, acquire_training_lock, hand_training_lock, release_training_lock
from core.runs import storage
from core.base import files


# ---------------------------------------------------------------------------
# The training lock
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Starting
# ---------------------------------------------------------------------------

def start_background(args: list[str], log_path) -> int:
    """Start `python -u -m core <args>` in a session of its own, so that it
    outlives the caller (the app's page), its output appended to `log_path`.
    Returns its pid."""
    with open(log_path, "a") as log:
        child = subprocess.Popen([sys.executable, "-u", "-m", "core", *args], cwd=paths.PROJECT_ROOT,
                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    return child.pid


def start_with_lock(args: list[str], log_path, holder: str, runs_root=None) -> int:
    """start_background, handing the new process the training lock the
    caller took (the caller takes it first: TensorFlow takes seconds to
    import, and a second start in that window must be refused too). Returns
    its pid; on failure the lock is released."""
    try:
        pid = start_background(args, log_path)
    except BaseException:
        release_training_lock(runs_root)
        raise
    hand_training_lock(holder, pid, runs_root)
    return pid


def launch_training(config, name: str | None = None, runs_root=None, deploy_when_fit: bool = False) -> Path:
    """Start a run of `config` (a TrainConfig) in a background process; returns
    its folder at once. Refused while another training is alive. `deploy_when_fit`:
    the process then deploys the run if it passes the quality floor (core.jobs.first_model)."""
    config.validate()
    acquire_training_lock("starting", runs_root)
    try:
        run_dir = storage.new_run(asdict(config), name=name, runs_root=runs_root)
    except BaseException:
        release_training_lock(runs_root)
        raise
    args = ["train", "--run-dir", str(run_dir)] + (["--deploy-when-fit"] if deploy_when_fit else [])
    pid = start_with_lock(args, run_dir / "train.log", run_dir.name, runs_root)
    storage.set_status(run_dir, "running", **storage.owner(pid))
    return run_dir


def launch_search(name: str, n_trials: int, base: dict | None = None, space: dict | None = None,
                  timeout: float | None = None) -> int:
    """Start a search worker (core.training.tune) in a background process; returns its
    process id. The study is created or checked first, so a bad space is
    refused at once. The worker holds the training lock while it lives: no
    other training starts from the app or `python -m core train` meanwhile
    (workers started from the command line do not take it)."""
    from core.training import studies  # Optuna: only when a search starts

    studies.open_study(name, base, space)
    worker = search_worker(name)
    if worker:
        raise TrainingBusy(f"study {name} is already being searched (process {worker['pid']}); "
                           "stop that search first")
    lock_name = f"search-{name}"
    acquire_training_lock(lock_name)
    args = ["tune", "--study", name, "--trials", str(n_trials)] + (["--timeout", str(timeout)] if timeout else [])
    pid = start_with_lock(args, studies.log_path(name), lock_name)
    files.write_json(studies.worker_path(name), {**storage.owner(pid), "trials": n_trials,
                                             "started_at": datetime.now(UTC).isoformat(timespec="seconds")})
    return pid


def launch_external(run_dir, data_dir, name: str | None = None, class_map_text: str = "") -> str:
    """Start `python -m core evaluate --run RUN --data DIR` (core.inference.external) in a
    background process; returns the set's name at once. Refused while the
    same set is being evaluated."""
    from core.data import datasets
    from core.inference import external

    run_dir = Path(run_dir)
    name = storage.check_run_id(name or datasets.source_name(Path(data_dir).expanduser()))
    external.parse_class_map(class_map_text)  # refuse a malformed map here, not in the background
    if not Path(data_dir).expanduser().is_dir():
        raise ValueError(f"{data_dir}: dataset folder not found")
    for found in external.list_external(run_dir):
        if found["name"] == name and found["state"] == "running":
            raise ValueError(f"{name} is already being evaluated for run {run_dir.name}")
    out = external.results_dir(run_dir, name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)
    args = ["evaluate", "--run", str(run_dir), "--data", str(data_dir), "--name", name]
    if class_map_text.strip():
        args += ["--class-map", class_map_text]
    pid = start_background(args, out / "evaluate.log")
    storage.set_status(out, "running", **storage.owner(pid), done=0, total=None, data_dir=str(data_dir),
                       started=storage.now())
    return name


def adaptation_dir(name: str) -> Path:
    """Where a site's adaptation writes: its log (adapt.log) and, when done, adaptation.json."""
    return paths.artifacts_dir() / "sites" / files.check_name(name, "site name")


def launch_adaptation(site_dirs: list, name: str, runs_root=None) -> int:
    """Start `python -m core adapt DIR... --site NAME` (core.training.site_adaptation)
    in a background process, holding the training lock (one training at a
    time); its log goes to artifacts/sites/NAME/adapt.log. Returns its pid.
    Refused (TrainingBusy) while another training is alive, and for a folder
    that is not there."""
    folder = adaptation_dir(name)
    site_dirs = [str(Path(d).expanduser()) for d in site_dirs]
    if not site_dirs:
        raise ValueError("give at least one folder of the site's labelled slices")
    for site_dir in site_dirs:
        if not Path(site_dir).is_dir():
            raise ValueError(f"{site_dir}: folder not found")
    holder = f"site-{name}"
    acquire_training_lock(holder, runs_root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "adaptation.json").unlink(missing_ok=True)  # the page shows the new result, not an old one
    except BaseException:
        release_training_lock(runs_root)
        raise
    return start_with_lock(["adapt", *site_dirs, "--site", name], folder / "adapt.log", holder, runs_root)


# ---------------------------------------------------------------------------
# Searches in the background
# ---------------------------------------------------------------------------

def search_worker(name: str) -> dict | None:
    """The live background worker of a study ({pid, trials, started_at}), None if there is none."""
    from core.training import studies  # Optuna: only when a search is asked about

    worker = files.read_json(studies.worker_path(name))
    return worker if worker and storage.pid_alive(worker.get("pid"), worker.get("pid_start")) else None


# ---------------------------------------------------------------------------
# Cancelling and resuming
# ---------------------------------------------------------------------------

def request_cancel(run_dir) -> None:
    """Ask a running training to stop at its next batch (train.RunProgress checks the file)."""
    (Path(run_dir) / "cancel").touch()


def stop_search(name: str) -> bool:
    """SIGTERM the study's background worker: the run in progress is marked
    cancelled and its trial failed. False when no worker is alive."""
    worker = search_worker(name)
    if worker:
        os.kill(int(worker["pid"]), signal.SIGTERM)
    return worker is not None


def resume(run_dir: Path, report=print) -> Path:
    """Continue an interrupted, failed or cancelled run where it stopped."""
    from core.training import checkpoint
    from core.runs.train_config import TrainConfig
    from core.training.fit import train  # TensorFlow: only when a run resumes

    run_dir = Path(run_dir)
    state = storage.read_status(run_dir).get("state")
    if state in ("running", "completed"):
        raise ValueError(f"run {run_dir.name} is {state}: nothing to resume")
    (run_dir / "cancel").unlink(missing_ok=True)
    config = TrainConfig.from_dict(files.read_json(run_dir / "config.json", {}), starting=True)
    report(f"resuming {run_dir.name}: {checkpoint.describe(run_dir)} committed")
    if config.strategy == "multiworker":
        # The other workers' backups lived in scratch folders that are gone.
        raise ValueError(f"run {run_dir.name} trained on several machines: start it again instead of resuming")
    return train(config, run_dir=run_dir, report=report)
