"""The training lock and the words for stopping a run.

One training (a run, or a search's trials) at a time holds the lock: the
machine has no cores to spare. A run is cancelled by a file in its folder
(checked between training steps) or by SIGTERM.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

from core.base import files, paths
from core.runs import catalogue, storage


class TrainingBusy(RuntimeError):
    """Another training process holds the lock."""


class RunCancelled(KeyboardInterrupt):
    """Raised when the user asks a run to stop (cancel file or SIGTERM); a
    KeyboardInterrupt so that nothing on the way treats it as a failure."""


def _lock_path(runs_root=None) -> Path:
    return Path(runs_root or paths.runs_dir()) / ".training.lock"


def active_training(runs_root=None) -> dict | None:
    """The live training job ({pid, run}) or None. A lock left by a process
    that died (killed, machine stopped) is stale and does not count."""
    try:
        lock = files.read_json(_lock_path(runs_root))
    except ValueError:
        # Empty: its taker was killed between creating and writing it (stale), or is writing it now.
        try:
            age = time.time() - _lock_path(runs_root).stat().st_mtime
        except OSError:
            return None
        return None if age > 10 else {"pid": None, "run": "starting"}
    if lock and storage.pid_alive(lock.get("pid"), lock.get("pid_start")):
        return lock
    return None


def current_training(runs_root=None) -> tuple[dict | None, bool]:
    """(run, alive): the run being trained now, else the newest run. A run
    launched a moment ago counts as alive before its process takes the
    training lock (it is 'running' with a live pid from the start)."""
    listed = catalogue.list_runs(runs_root)
    holder = active_training(runs_root) or {}
    running = [r for r in listed if r["id"] == holder.get("run")] or \
              [r for r in listed if r["status"].get("state") == "running"]
    if running:
        return running[0], True
    return (listed[0] if listed else None), False


def refuse_if_training(runs_root=None) -> None:
    """TrainingBusy when a training is alive: the lock's holder, or a run
    launched a moment ago whose process has not taken the lock yet. What the
    app asks before it starts a run, a search or an adaptation."""
    busy, alive = current_training(runs_root)
    if alive:
        raise TrainingBusy(f"training run {busy['id']} is already running; wait for it to finish or cancel it")


def acquire_training_lock(run_id: str, runs_root=None, pid: int | None = None) -> None:
    """Only one training runs at a time. O_EXCL makes the check-and-create
    atomic between two starting processes."""
    lock = _lock_path(runs_root)
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = active_training(runs_root)
            # Taken for us by launch_training: held by our parent until it
            # hands it over, then by us under our run id.
            if holder and (holder.get("pid") == os.getppid()
                           or (holder.get("pid") == os.getpid() and holder.get("run") == run_id)):
                return
            if holder:
                raise TrainingBusy(f"training run {holder.get('run')} is already running "
                                   f"(process {holder.get('pid')}); wait for it or cancel it")
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump({**storage.owner(pid or os.getpid()), "run": run_id}, handle)
        return
    raise TrainingBusy("could not take the training lock")


def hand_training_lock(run_id: str, pid: int, runs_root=None) -> None:
    """Pass the lock to the training process that was just started."""
    files.write_json(_lock_path(runs_root), {**storage.owner(pid), "run": run_id})


def release_training_lock(runs_root=None) -> None:
    lock = files.read_json(_lock_path(runs_root))
    if lock and lock.get("pid") == os.getpid():
        _lock_path(runs_root).unlink(missing_ok=True)


@contextlib.contextmanager
def sigterm_raises(error: type[BaseException]):
    """SIGTERM (the app's Cancel or Stop) raises `error` in the main thread
    while in this block; the previous handler comes back after it. Elsewhere
    than the main thread Python cannot take signals: nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise error("stopped by SIGTERM")
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
