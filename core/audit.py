"""Duplicate audit: exact and near-duplicate image pairs that cross splits,
classes or sources, the ones that leak between train and test or conflict."""
from __future__ import annotations

import hashlib
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image

from core.images import load_image


def audit_duplicates(index: pd.DataFrame, max_distance: int = 6, progress=None) -> pd.DataFrame:
    """Exact (sha256 of the bytes) and near (64-bit pHash of the grey image,
    Hamming distance <= max_distance) duplicate pairs that cross splits,
    classes or sources, the ones that leak or conflict; cross-class pairs first.
    The default max_distance was chosen on COVID-CT (docs/benchmarks.md).
    progress(done, total) is called after each image is hashed.
    """
    index = index.sort_values("relpath", ignore_index=True)
    digests, hashes = [], []
    for i, (path, relpath) in enumerate(zip(index["path"], index["relpath"])):
        content = Path(path).read_bytes()
        digests.append(hashlib.sha256(content).hexdigest())
        gray = Image.fromarray(load_image(content, name=relpath)).convert("L")
        hashes.append(np.packbits(imagehash.phash(gray).hash.ravel()))
        if progress is not None:
            progress(i + 1, len(index))

    # All pairs at once: XOR the 64-bit hashes and count the differing bits.
    codes = np.array(hashes, dtype=np.uint8).reshape(len(index), 8).view(np.uint64).ravel()
    a, b = np.triu_indices(len(index), k=1)
    distance = np.bitwise_count(codes[a] ^ codes[b]).astype(int)
    digests = np.array(digests)
    exact = digests[a] == digests[b]
    labels, splits = index["label"].to_numpy(), index["split"].to_numpy()
    sources = index["source"].to_numpy() if "source" in index else np.zeros(len(index), dtype=object)
    cross_class = labels[a] != labels[b]
    cross_split = splits[a] != splits[b]
    # The same scan in two sources (public collections re-share each other's images) leaks just the same.
    cross_source = sources[a] != sources[b]
    keep = (exact | (distance <= max_distance)) & (cross_class | cross_split | cross_source)
    a, b = a[keep], b[keep]

    pairs = pd.DataFrame({
        "relpath_a": index["relpath"].to_numpy()[a], "relpath_b": index["relpath"].to_numpy()[b],
        "label_a": labels[a], "label_b": labels[b],
        "split_a": splits[a], "split_b": splits[b],
        "kind": np.where(exact[keep], "exact", "near"),
        "distance": distance[keep],
        "cross_class": cross_class[keep], "cross_split": cross_split[keep], "cross_source": cross_source[keep],
    })
    return pairs.sort_values(["cross_class", "distance", "relpath_a", "relpath_b"],
                             ascending=[False, True, True, True], ignore_index=True)
