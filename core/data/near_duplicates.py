"""Pairs of 64-bit perceptual hashes within a Hamming distance, without all N² pairs.

Multi-index hashing (Norouzi et al. 2012): cut each 64-bit hash into
max_distance + 1 chunks. Two hashes that differ in at most max_distance bits
differ in fewer chunks than there are, so at least one chunk is equal
(pigeonhole). Only hashes that share a chunk value are compared, one bucket
of equal chunk values at a time, so memory is O(N) plus one block of one
bucket, instead of the N² / 2 pairs of a brute-force comparison.
"""
from __future__ import annotations

import numpy as np

BITS = 64
PAIRS_PER_BLOCK = 4_000_000  # pairs compared at once: bounds memory where many hashes share a chunk value


def chunk_values(codes: np.ndarray, chunks: int) -> np.ndarray:
    """N x chunks: the value of each of `chunks` near-equal bit slices of each hash."""
    widths = np.full(chunks, BITS // chunks)
    widths[:BITS % chunks] += 1
    starts = np.concatenate([[0], np.cumsum(widths)[:-1]])
    codes = codes.astype(np.uint64)
    return np.stack([(codes >> np.uint64(start)) & np.uint64((1 << int(width)) - 1)
                     for start, width in zip(starts, widths)], axis=1)


def hamming_pairs(codes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, distance) of every pair a < b with popcount(codes[a] ^ codes[b]) <= max_distance,
    sorted by (a, b); codes: N unsigned 64-bit hashes."""
    codes = np.asarray(codes, dtype=np.uint64)
    if not 0 <= max_distance < BITS:
        raise ValueError(f"max_distance {max_distance} must be between 0 and {BITS - 1}")
    chunks = chunk_values(codes, max_distance + 1)
    found = [_pairs_sharing_chunk(codes, chunks, j, max_distance) for j in range(chunks.shape[1])]
    a, b, distance = (np.concatenate(parts) for parts in zip(*found))  # one entry per chunk: never empty
    order = np.lexsort((b, a))
    return a[order], b[order], distance[order]


def _pairs_sharing_chunk(codes, chunks, j, max_distance):
    """The close pairs whose first equal chunk is chunk j (so that each pair is found once)."""
    order = np.argsort(chunks[:, j], kind="stable")
    values = chunks[order, j]
    bounds = np.flatnonzero(np.diff(values)) + 1
    found = [([], [], [])]
    for bucket in np.split(order, bounds):
        if len(bucket) > 1:
            found.append(_close_in_bucket(codes, chunks, np.sort(bucket), j, max_distance))
    return tuple(np.concatenate(parts).astype(np.int64) for parts in zip(*found))


def _close_in_bucket(codes, chunks, members, j, max_distance):
    a_all, b_all, d_all = [], [], []
    block = max(1, PAIRS_PER_BLOCK // len(members))
    for start in range(0, len(members), block):
        rows = members[start:start + block]
        a, b = np.nonzero(rows[:, None] < members[None, :])  # each pair once, a < b
        a, b = rows[a], members[b]
        distance = np.bitwise_count(codes[a] ^ codes[b]).astype(np.int64)
        earlier_equal = (chunks[a, :j] == chunks[b, :j]).any(axis=1)  # found at an earlier chunk
        keep = (distance <= max_distance) & ~earlier_equal
        a_all.append(a[keep]), b_all.append(b[keep]), d_all.append(distance[keep])
    return np.concatenate(a_all), np.concatenate(b_all), np.concatenate(d_all)
