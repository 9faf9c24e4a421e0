"""What the CLI's commands share: which run a command uses, how it reports,
its exit code for bad input, and which files a list of inputs names."""
from __future__ import annotations

import glob
from pathlib import Path

EXIT_BAD_INPUT = 2


def run_dir_for(run_id: str | None) -> Path:
    """A run's folder: by id, "latest" (the newest completed run), or None:
    the deployed model (core.inference.deploy)."""
    from core.inference import deploy  # TensorFlow: only when a command needs a run
    from core.inference.predict import latest_completed_run
    from core.runs import storage

    if not run_id:
        return deploy.deployed_run_dir()
    if run_id == "latest":
        return latest_completed_run()
    if Path(run_id).is_dir() and (Path(run_id) / "config.json").exists():  # a run folder's path
        return Path(run_id)
    folder = storage.run_path(run_id)
    if not folder.is_dir():
        raise ValueError(f"run {run_id!r} not found in {folder.parent}")
    return folder


def report(line: str) -> None:
    print(line, flush=True)  # live in a log file too (the app tails train.log)


PROGRESS_FROM = 20  # files: fewer finish before a progress bar would tell anything


def image_files(inputs: list[str]) -> list[str]:
    """Files as given, folders as every image under them (sorted), and glob
    patterns (quoted, so the shell left them alone) as their matches."""
    from core.data.images import IMAGE_EXTENSIONS

    files = []
    for given in inputs:
        if Path(given).is_dir():
            files += sorted(str(p) for p in Path(given).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif glob.has_magic(given):
            matches = sorted(glob.glob(given, recursive=True))
            if not matches:
                raise ValueError(f"{given}: no file matches this pattern")
            files += [m for m in matches if Path(m).is_file()]
        else:
            files.append(given)
    return files
