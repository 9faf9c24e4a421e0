"""Files that matter are written whole or not at all, and names that become
file names cannot leave their folder.

Every write goes to a temporary file in the same folder, is flushed to disk,
then renamed over the target: a crash mid-write leaves the previous version
intact, never half a file (a rename within one file system is atomic).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

# Names that become one file or folder name: a letter or digit first, then letters, digits, '.', '_', '-'.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@contextlib.contextmanager
def replaced_atomically(path):
    """A temporary path beside `path` to write to; renamed over `path` when the
    block ends without error, removed when it fails."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write(path, write, binary: bool = False) -> None:
    """Call write(handle) on a temporary file, sync it, then rename it to `path`."""
    with replaced_atomically(path) as tmp:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": ""})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())


def write_json(path, data) -> None:
    atomic_write(path, lambda handle: json.dump(data, handle, indent=2, default=str))


def write_csv(path, frame) -> None:
    atomic_write(path, lambda handle: frame.to_csv(handle, index=False))


def write_bytes(path, payload: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(payload), binary=True)


def save_npz(path, **arrays) -> None:
    atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays), binary=True)


def read_json(path, default=None):
    """The file's JSON, `default` when it is missing; ValueError naming the
    file when it is empty or not JSON (a damaged run, core.runs.checks)."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return default
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None


def check_name(name, what: str, max_length: int = 100) -> str:
    """`name` when it is safe as one file or folder name (run ids, study and
    site names): anything that could leave its folder is refused."""
    if (not isinstance(name, str) or not _SAFE_NAME.match(name) or len(name) > max_length
            or ".." in name):
        raise ValueError(f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-' only "
                         f"(at most {max_length}, starting with a letter or digit)")
    return name
