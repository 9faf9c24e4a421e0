"""Multi-index hashing finds exactly the pairs a brute-force comparison finds."""
import numpy as np
import pytest

from core.data import near_duplicates


def brute_force(codes, max_distance):
    a, b = np.triu_indices(len(codes), k=1)
    distance = np.bitwise_count(codes[a] ^ codes[b]).astype(np.int64)
    keep = distance <= max_distance
    return a[keep], b[keep], distance[keep]


def clustered_codes(rng, n=600):
    """Random hashes plus near copies of some (a few bits flipped), and exact copies."""
    codes = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
    copies = codes[rng.integers(0, n, n // 2)].copy()
    for i in range(len(copies)):
        for bit in rng.choice(64, rng.integers(0, 9), replace=False):
            copies[i] ^= np.uint64(1) << np.uint64(bit)
    return np.concatenate([codes, copies, codes[:5]])


@pytest.mark.parametrize("max_distance", [0, 2, 6, 10])
def test_the_same_pairs_as_brute_force(max_distance):
    codes = clustered_codes(np.random.default_rng(max_distance))
    found = near_duplicates.hamming_pairs(codes, max_distance)
    expected = brute_force(codes, max_distance)
    assert len(expected[0]) > 5  # the copies make close pairs
    for got, want in zip(found, expected):
        np.testing.assert_array_equal(got, want)


def test_a_crowded_bucket_is_compared_in_blocks(monkeypatch):
    monkeypatch.setattr(near_duplicates, "PAIRS_PER_BLOCK", 50)  # force many blocks
    codes = np.array([0] * 30 + [2**40 + 1] * 20, dtype=np.uint64)  # two crowds of identical hashes
    a, b, distance = near_duplicates.hamming_pairs(codes, 1)  # the crowds differ in 2 bits
    assert len(a) == 30 * 29 // 2 + 20 * 19 // 2 and not distance.any()


def test_an_impossible_distance_is_refused():
    with pytest.raises(ValueError, match="max_distance 64"):
        near_duplicates.hamming_pairs(np.zeros(3, np.uint64), 64)


def test_the_same_pairs_as_brute_force_on_covid_ct(data_dir):
    """The audit's candidates on COVID-CT's own pHashes (746 images: the brute force's
    278,000 pairs still fit) are exactly the brute force's."""
    from core.data import audit
    from core.data import datasets

    index = datasets.index_dataset(data_dir).sort_values("relpath", ignore_index=True)
    _, codes, _ = audit._hash_images(index)
    found = near_duplicates.hamming_pairs(codes, 6)
    expected = brute_force(codes, 6)
    assert len(expected[0]) >= 4  # COVID-CT's known copies
    for got, want in zip(found, expected):
        np.testing.assert_array_equal(got, want)
