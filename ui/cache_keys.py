"""What the caches are keyed by besides a path: the file's modification time,
and for a dataset the latest change to any of its sources. A rewritten file
or a changed dataset gets a new key, so it is read again at the next rerun."""
from __future__ import annotations

import os

from core.data import datasets


def mtime(path) -> float:
    """Modification time, 0 for a missing file: part of every cache key."""
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


def dataset_stamp(data_dir) -> float:
    """Latest change to the dataset (each source of it): adding or removing an
    image changes its folder's mtime; split lists and metadata tables are
    checked one by one."""
    stamps = [0.0]
    for root in datasets.source_dirs(data_dir):
        if root.is_dir():
            entries = [root, *root.iterdir(), *root.glob("splits/*"), *root.glob("meta/*")]
            stamps += [mtime(p) for p in entries]
    return max(stamps)
