"""Files that matter are written whole or not at all, files are read only
when they are regular files within a bound, and names that become file names
cannot leave their folder.

Every write goes to a temporary file in the same folder, is flushed to disk,
then renamed over the target: a crash mid-write leaves the previous version
intact, never half a file (a rename within one file system is atomic).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import stat
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
        # Text as UTF-8, a file name's bytes that are not UTF-8 written back as they were (CSV tables of paths).
        text = {"newline": "", "encoding": "utf-8", "errors": "surrogateescape"}
        with open(tmp, "wb" if binary else "w", **({} if binary else text)) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())


def write_json(path, data) -> None:
    atomic_write(path, lambda handle: json.dump(data, handle, indent=2, default=str))


def write_csv(path, frame) -> None:
    # Lines end in CRLF (RFC 4180): the csv module quotes a field holding either character of the line
    # ending, so a name with a carriage return or a newline stays one field of one row.
    atomic_write(path, lambda handle: frame.to_csv(handle, index=False, lineterminator="\r\n"))


def write_bytes(path, payload: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(payload), binary=True)


def save_npz(path, **arrays) -> None:
    atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays), binary=True)


MAX_JSON_BYTES = 16 * 2**20  # a settings or results file; more is not one this tool wrote
MAX_JSON_DEPTH = 32  # nesting of objects and lists: far more than the files this tool writes need


class Refused(OSError):
    """A path that is not read: not a regular file, over its bound, or a link
    leading out of its folder. str() is the reason alone."""

    def __str__(self) -> str:
        return self.args[0]


def kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def outside(path, folder) -> bool:
    """True when `path`, its links resolved, is not within `folder` (resolved too)."""
    root, target = os.path.realpath(folder), os.path.realpath(path)
    return os.path.commonpath([root, target]) != root


def read_regular(path, limit: int, inside=None, head: bool = False) -> bytes:
    """The bytes of `path` when it is a regular file of at most `limit` bytes
    (links followed, and, with `inside`, leading nowhere out of that folder);
    Refused saying why not. `head`: the first `limit` bytes of a larger file
    instead. Opened without blocking, so a FIFO never hangs a read; a file is
    never read past its bound, whatever it claims its size is."""
    if inside is not None and outside(path, inside):
        raise Refused(f"a link to outside {Path(inside).name or inside}")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Refused(f"{kind_of(info.st_mode)}, not a regular file")
        # A read allocates what it asks for: ask for the size the file states (and a byte to see
        # whether there is more), then small steps for a file that grows or states none (/proc).
        chunks, total, want = [], 0, min(info.st_size, limit) + 1
        while total <= limit:
            chunk = os.read(fd, min(want if not chunks else 2**20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        content = b"".join(chunks)
    finally:
        os.close(fd)
    if head:
        return content[:limit]
    if len(content) > limit:
        raise Refused(f"file too large (over {limit / 2**20:g} MB)")
    return content


def files_under(folder) -> list[tuple[Path, str | None]]:
    """(path, problem) of every entry under `folder` that is not a folder,
    sorted; problem is None for a regular file, else why it may not be read: a
    link leading out of `folder`, a link to a folder (never entered: it could
    loop or lead out), a FIFO, a socket, a device, a broken link."""
    found, pending = [], [Path(folder)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                path = Path(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    pending.append(path)
                    continue
                if entry.is_symlink() and outside(path, folder):
                    found.append((path, f"a link to outside {Path(folder).name}"))
                    continue
                try:
                    mode = os.stat(path).st_mode
                except OSError as error:
                    found.append((path, f"cannot read ({error.strerror})"))
                    continue
                if stat.S_ISDIR(mode):
                    found.append((path, "a link to a folder, not followed"))
                else:
                    found.append((path, None if stat.S_ISREG(mode) else f"{kind_of(mode)}, not a regular file"))
    return sorted(found)


def json_depth(value) -> int:
    """How deeply objects and lists nest in `value` (a number or string: 1), without recursion."""
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [child for item in level if isinstance(item, (dict, list))
                 for child in (item.values() if isinstance(item, dict) else item)]
    return depth


def parse_json(content: bytes | str):
    """The JSON value of `content`; ValueError saying why it is not one this tool
    reads: not JSON, empty, or nested deeper than MAX_JSON_DEPTH."""
    if not content.strip():
        raise ValueError("empty file")
    try:
        value = json.loads(content)
    except RecursionError:
        raise ValueError(f"not JSON this tool reads (nested deeper than {MAX_JSON_DEPTH} levels)") from None
    except ValueError as error:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not text
        raise ValueError(f"not JSON ({error})") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"not JSON this tool reads (nested deeper than {MAX_JSON_DEPTH} levels)")
    return value


def read_json(path, default=None, inside=None):
    """The file's JSON, `default` when it is missing; ValueError naming the
    file when it is empty, not JSON, too deep, too large or not a regular
    file (a damaged run, core.runs.checks)."""
    try:
        content = read_regular(path, MAX_JSON_BYTES, inside)
    except FileNotFoundError:
        return default
    except Refused as error:
        raise ValueError(f"{path}: {error}") from None
    try:
        return parse_json(content)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def as_text(name: str) -> str:
    """`name` as text a table (pandas, Arrow) can hold: a file name's bytes that
    are not UTF-8 (os.fsdecode's stand-ins) written as \\xff, any other lone
    surrogate as the bytes it would take."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def check_name(name, what: str, max_length: int = 100) -> str:
    """`name` when it is safe as one file or folder name (run ids, study and
    site names): anything that could leave its folder is refused."""
    if (not isinstance(name, str) or not _SAFE_NAME.match(name) or len(name) > max_length
            or ".." in name):
        raise ValueError(f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-' only "
                         f"(at most {max_length}, starting with a letter or digit)")
    return name
