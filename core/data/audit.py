"""Duplicate audit: exact and near-duplicate image pairs that cross splits,
classes or sources, the ones that leak between train and test or conflict."""
from __future__ import annotations

import hashlib

import imagehash
import numpy as np
import pandas as pd
from PIL import Image

from core.base import files
from core.data import lung
from core.data import near_duplicates
from core.data.images import in_threads, load_image
from core.data.limits import MAX_FILE_BYTES

# A candidate pair is confirmed on a finer hash of the lung-aligned slices:
# cropping both to their lung fields undoes the different figure crops of one slice.
# Candidates: 64-bit pHashes of the lung crops at most this many bits apart (docs/duplicate-audit.md).
MAX_DISTANCE = 6
FINE_HASH_SIZE = 16       # 256-bit pHash
FINE_MAX_DISTANCE = 40    # of 256 bits; docs/duplicate-audit.md gives the separation it rests on


def audit_duplicates(index: pd.DataFrame, max_distance: int = MAX_DISTANCE, progress=None) -> pd.DataFrame:
    """Duplicate pairs that cross splits, classes or sources (the ones that
    leak or conflict), cross-class pairs first: exact copies (same sha256 of
    the bytes) and near copies (64-bit pHash of the slices cropped to their
    lungs within `max_distance` bits, confirmed by a 256-bit pHash of the
    same crops within FINE_MAX_DISTANCE bits). Candidates are found by
    multi-index hashing (core.data.near_duplicates), in memory O(N).
    progress(done, total) is called after each image is hashed."""
    index = index.sort_values("relpath", ignore_index=True)
    digests, codes, fine_codes = _hash_images(index, progress)
    a, b, distance = near_duplicates.hamming_pairs(codes, max_distance)
    labels, splits = index["label"].to_numpy(), index["split"].to_numpy()
    sources = index["source"].to_numpy() if "source" in index else np.zeros(len(index), dtype=object)
    # The same slice in two sources (public collections re-share each other's images) leaks just the same.
    crosses = (labels[a] != labels[b]) | (splits[a] != splits[b]) | (sources[a] != sources[b])
    a, b, distance = a[crosses], b[crosses], distance[crosses]
    exact = digests[a] == digests[b]
    fine = fine_distances(fine_codes, a, b)
    keep = exact | (fine <= FINE_MAX_DISTANCE)
    a, b = a[keep], b[keep]
    pairs = pd.DataFrame({
        "relpath_a": index["relpath"].to_numpy()[a], "relpath_b": index["relpath"].to_numpy()[b],
        "label_a": labels[a], "label_b": labels[b],
        "split_a": splits[a], "split_b": splits[b],
        "kind": np.where(exact[keep], "exact", "near"),
        "distance": distance[keep], "fine_distance": fine[keep],
        "cross_class": labels[a] != labels[b], "cross_split": splits[a] != splits[b],
        "cross_source": sources[a] != sources[b],
    })
    return pairs.sort_values(["cross_class", "distance", "relpath_a", "relpath_b"],
                             ascending=[False, True, True, True], ignore_index=True)


def _hash_images(index: pd.DataFrame, progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sha256 hex digests, 64-bit pHash codes as uint64, 256-bit pHashes as N x 32
    uint8) of the index's images, in its order; each image is decoded once, in
    parallel threads (core.data.images.in_threads)."""
    digests = np.empty(len(index), dtype=object)
    codes = np.empty((len(index), 8), dtype=np.uint8)
    fine = np.empty((len(index), FINE_HASH_SIZE**2 // 8), dtype=np.uint8)

    def hash_one(i, path, relpath):
        content = files.read_regular(path, MAX_FILE_BYTES)
        view = _lung_view(load_image(content, name=relpath))
        digests[i] = hashlib.sha256(content).hexdigest()
        codes[i] = np.packbits(imagehash.phash(view).hash.ravel())
        fine[i] = np.packbits(imagehash.phash(view, hash_size=FINE_HASH_SIZE).hash.ravel())

    for done, _ in enumerate(in_threads(hash_one, range(len(index)), index["path"], index["relpath"]), 1):
        if progress is not None:
            progress(done, len(index))
    return digests.astype(str), codes.view(np.uint64).ravel(), fine


def fine_distances(fine_codes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits apart of the 256-bit pHashes of the pairs (a[k], b[k])."""
    return np.bitwise_count(fine_codes[a] ^ fine_codes[b]).sum(axis=1).astype(int)


def _lung_view(image: np.ndarray) -> Image.Image:
    """The grey slice cropped to its lungs with a tight margin: the same slice cut
    from two figures with different borders (or a cropped copy) then lines up."""
    return Image.fromarray(lung.crop_to_lungs(image, margin=0.02)).convert("L")
