"""Decoded images on disk: each image file decoded, cropped and resized once,
kept as a raw uint8 file, and read back by the input pipeline (core.training.pipeline)
without Python in the loop.

An entry is keyed by the image file's path, byte size and modification time
and by what was made of it (input size, lung crop), so a file that changes
gets a new entry and a second run with the same files decodes nothing. Many
runs share the folder: each entry is written to a temporary name and renamed,
so a reader sees a whole entry or none, and two writers of one entry agree.

Entries of files since changed or deleted are not removed: delete the folder
(`artifacts/cache/images`, or $COVIDCT_IMAGE_CACHE) to reclaim the space; it
fills again on the next run.
"""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.base import paths
from core.data.images import in_threads, load_image, model_input
from core.data.limits import ImageReadError

# Bump when decoding, cropping or resizing changes what an entry holds.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CachedImages:
    """The cache entries of a list of image files, in their order: what the
    input pipeline streams. `sources` are the image files, `entries` their
    raw size x size x 3 uint8 files."""
    sources: tuple[str, ...]
    entries: tuple[str, ...]
    size: int

    def __len__(self) -> int:
        return len(self.entries)

    def rows(self, start: int, stop: int) -> "CachedImages":
        return CachedImages(self.sources[start:stop], self.entries[start:stop], self.size)

    def array(self) -> np.ndarray:
        """All of them in memory (N x size x size x 3 uint8): for a batch, not a dataset."""
        images = np.empty((len(self), self.size, self.size, 3), dtype=np.uint8)
        for i, (source, entry) in enumerate(zip(self.sources, self.entries)):
            images[i] = read_entry(entry, source, self.size)
        return images

    def chunks(self, rows: int):
        """Consecutive pieces of at most `rows` images, to score a large split in bounded memory."""
        for start in range(0, len(self), rows):
            yield self.rows(start, start + rows)

    def source_of(self, text: str) -> str | None:
        """The image file whose entry (or which itself) `text` names, if any."""
        for source, entry in zip(self.sources, self.entries):
            if entry in text or source in text:
                return source
        return None


def cache_root() -> Path:
    """$COVIDCT_IMAGE_CACHE, else the artifacts folder's cache/images."""
    return Path(os.environ.get("COVIDCT_IMAGE_CACHE", paths.artifacts_dir() / "cache" / "images"))


def entry_path(path, size: int, lung_crop: bool, root: Path | None = None, lung_mask: bool = False) -> Path:
    """Where the decoded `path` at `size` px lives: named by a hash of the
    file's absolute path, byte size and modification time, and the recipe."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{size}\0{lung_crop}\0{FORMAT_VERSION}"
    if lung_mask:  # only then: the entries of runs without it keep their names
        key += "\0lung_mask"
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    recipe = f"{size}px{'-lungs' if lung_crop else ''}{'-masked' if lung_mask else ''}"
    return (root or cache_root()) / recipe / digest[:2] / f"{digest}.u8"


def cache_images(paths_, size: int, lung_crop: bool = False, progress=None, root: Path | None = None,
                 lung_mask: bool = False) -> CachedImages:
    """The cache entries of `paths_`, decoding and writing the ones missing
    (in parallel threads, core.data.images.in_threads). progress(done, total) is
    called as images are done. ImageReadError ("<file>: <problem>") for a
    file that is gone or cannot be decoded."""
    sources = tuple(str(p) for p in paths_)
    entries = []
    for source in sources:
        try:
            entries.append(str(entry_path(source, size, lung_crop, root, lung_mask)))
        except OSError as error:
            raise ImageReadError(f"{source}: cannot be read ({error.strerror or error})") from error
    whole = size * size * 3  # bytes of an entry; one cut short (a full disk, say) is made again
    missing = [i for i, entry in enumerate(entries) if not os.path.isfile(entry) or os.path.getsize(entry) != whole]

    def fill(i: int) -> None:
        _write_entry(Path(entries[i]), model_input(load_image(sources[i]), size, lung_crop, lung_mask))

    already = len(sources) - len(missing)
    if progress is not None:
        progress(already, len(sources))
    for done, _ in enumerate(in_threads(fill, missing), already + 1):  # re-raises the first error
        if progress is not None:
            progress(done, len(sources))
    return CachedImages(sources, tuple(entries), size)


def _write_entry(entry: Path, image: np.ndarray) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
    os.replace(tmp, entry)


def read_entry(entry: str, source: str, size: int) -> np.ndarray:
    """One entry as a size x size x 3 uint8 array; ImageReadError naming the
    image file if the entry is gone or damaged."""
    try:
        raw = np.fromfile(entry, dtype=np.uint8)
    except OSError as error:
        raise ImageReadError(f"{source}: its decoded copy {entry} cannot be read ({error.strerror or error}); "
                             "run again to decode it again") from error
    if raw.size != size * size * 3:
        raise ImageReadError(f"{source}: its decoded copy {entry} is damaged ({raw.size} bytes, not "
                             f"{size * size * 3}); run again to decode it again")
    return raw.reshape(size, size, 3)
