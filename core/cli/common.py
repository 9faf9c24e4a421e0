"""What the CLI's commands share: which run a command uses, how it reports
(one line per input, whatever its name holds), its exit code for bad input,
the range of each numeric option, and which files a list of inputs names."""
from __future__ import annotations

import argparse
import glob
import sys
import unicodedata
from pathlib import Path

from core.base.ranges import Range

EXIT_BAD_INPUT = 2

# The range of each numeric option that is not a TrainConfig setting (those have theirs in its table).
N_BOOT = Range(1, 10_000)       # bootstrap resamples: memory grows with resamples x cases
ALPHA = Range(0, 1)             # a heatmap's opacity
MAX_DISTANCE = Range(0, 64)     # bits apart of two 64-bit perceptual hashes
PREDICT_BATCH = Range(1, 1024)  # slices per model call


def in_range(kind, allowed: Range):
    """An argparse type: a number of `kind` within `allowed`, else the option's one-line error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if value not in allowed:
            raise argparse.ArgumentTypeError(f"{text} must be {allowed}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


class OneLineParser(argparse.ArgumentParser):
    """argparse's refusals as the CLI's other errors: one line, exit code 2."""

    def error(self, message):
        print(f"error: {shown(self.prog)}: {shown(message)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


# Characters that would break a line or a tab-separated field, or change what a terminal shows: controls
# (newline, tab, escape), format characters (right-to-left overrides), line and paragraph separators,
# and the surrogates that stand for a file name's bytes that are not UTF-8.
_HIDDEN = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def shown(text) -> str:
    """`text` as one line with no tab: a backslash, and each character that could
    break the line, a field or the terminal, escaped as Python writes it
    (\\n, \\t, \\x1b, \\u202e; a file name's byte that is not UTF-8 as \\xff)."""
    text = str(text)
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_escaped(char) for char in text)


def _escaped(char: str) -> str:
    if char == "\\":
        return "\\\\"
    if "\udc80" <= char <= "\udcff":  # os.fsdecode's stand-in for a byte that is not UTF-8
        return f"\\x{ord(char) - 0xDC00:02x}"
    return repr(char)[1:-1] if unicodedata.category(char) in _HIDDEN else char


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
    print(shown(line), flush=True)  # live in a log file too (the app tails train.log)


PROGRESS_FROM = 20  # files: fewer finish before a progress bar would tell anything


def image_files(inputs: list[str], report=print) -> tuple[list[str], int]:
    """(files, how many were refused): files as given, folders as every image
    under them (sorted), and glob patterns (quoted, so the shell left them
    alone) as their matches. A file under a folder that may not be read (a
    link leading out of the folder, a FIFO, a device: core.base.files.files_under)
    is reported as "<file>: <reason>" and counted, not read."""
    from core.base.files import files_under
    from core.data.images import IMAGE_EXTENSIONS

    found, refused = [], 0
    for given in inputs:
        if Path(given).is_dir():
            for path, problem in files_under(given):
                if path.suffix.lower() in IMAGE_EXTENSIONS and problem:
                    report(f"{path}: {problem}")
                    refused += 1
                elif path.suffix.lower() in IMAGE_EXTENSIONS:
                    found.append(str(path))
        elif glob.has_magic(given):
            matches = sorted(glob.glob(given, recursive=True))
            if not matches:
                raise ValueError(f"{given}: no file matches this pattern")
            found += [m for m in matches if Path(m).is_file()]
        else:
            found.append(given)
    return found, refused
