"""The image cache and the streaming pipeline (core.data.image_cache,
core.training.pipeline): images are decoded once, reused while the file is unchanged,
decoded again when it changes, and a cache entry lost mid-epoch is an error
naming the image file. The frozen-stage cache reads from disk and gives way to
end-to-end training when it would not fit its budget."""
import os
import time

import numpy as np
import pytest
from PIL import Image

from core.data import image_cache
from core.data.image_cache import cache_images
from core.data.images import load_image, resize_image
from core.data.limits import ImageReadError
from core.training.pipeline import make_dataset, reading_errors


@pytest.fixture
def scans(tmp_path):
    """Six 40 x 30 grey PNG files of distinct noise."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(6):
        path = tmp_path / f"scan{i}.png"
        Image.fromarray(rng.integers(0, 256, (30, 40), dtype=np.uint8)).save(path)
        files.append(path)
    return files


def counting_decoder(monkeypatch):
    decoded = []

    def load(path, *args, **kwargs):
        decoded.append(os.path.basename(str(path)))
        return load_image(path, *args, **kwargs)
    monkeypatch.setattr(image_cache, "load_image", load)
    return decoded


def test_the_cache_holds_what_decoding_gives_and_is_reused(scans, tmp_path, monkeypatch):
    decoded = counting_decoder(monkeypatch)
    progress = []
    cached = cache_images(scans, 16, root=tmp_path / "cache", progress=lambda done, total: progress.append(done))
    assert sorted(decoded) == sorted(p.name for p in scans) and progress[-1] == len(scans)
    expected = np.stack([resize_image(load_image(p), 16) for p in scans])
    np.testing.assert_array_equal(cached.array(), expected)
    assert all(os.path.getsize(entry) == 16 * 16 * 3 for entry in cached.entries)

    decoded.clear()
    again = cache_images(scans, 16, root=tmp_path / "cache")
    assert decoded == [] and again == cached  # nothing decoded a second time
    other_size = cache_images(scans[:2], 24, root=tmp_path / "cache")
    assert len(decoded) == 2 and set(other_size.entries).isdisjoint(cached.entries)


def test_a_changed_file_is_decoded_again(scans, tmp_path, monkeypatch):
    cached = cache_images(scans, 16, root=tmp_path / "cache")
    decoded = counting_decoder(monkeypatch)
    Image.new("L", (40, 30), 200).save(scans[2])  # new content, new size and mtime
    os.utime(scans[2], ns=(time.time_ns(), time.time_ns() + 10**9))
    again = cache_images(scans, 16, root=tmp_path / "cache")
    assert decoded == ["scan2.png"]
    assert again.entries[2] != cached.entries[2] and again.entries[:2] == cached.entries[:2]
    assert (again.array()[2] == 200).all()


def test_a_file_gone_before_decoding_is_named(scans, tmp_path):
    scans[3].unlink()
    with pytest.raises(ImageReadError, match="scan3.png: cannot be read"):
        cache_images(scans, 16, root=tmp_path / "cache")


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_an_entry_lost_during_training_names_the_image_file(scans, tmp_path, damage):
    cached = cache_images(scans, 16, root=tmp_path / "cache")
    dataset = make_dataset(cached, np.array([0, 1] * 3), batch_size=2, training=True)
    assert len(list(dataset)) == 3  # the first epoch reads every entry
    if damage == "deleted":
        os.remove(cached.entries[4])
    else:
        with open(cached.entries[4], "r+b") as entry:
            entry.truncate(100)
    with pytest.raises(ImageReadError) as caught, reading_errors(cached):
        for _ in dataset:  # the second epoch
            pass
    message = str(caught.value)
    assert message.startswith(f"{scans[4]}: its decoded copy {cached.entries[4]}")
    assert "\n" not in message
    with pytest.raises(ImageReadError, match="scan4.png: its decoded copy"):
        cached.array()
    # The next run decodes it again, as the message says.
    np.testing.assert_array_equal(cache_images(scans, 16, root=tmp_path / "cache").array()[4],
                                  resize_image(load_image(scans[4]), 16))


def test_workers_read_disjoint_shares_of_the_files(scans, tmp_path):
    cached = cache_images(scans, 16, root=tmp_path / "cache")
    labels = np.arange(6) % 2
    pixels = cached.array().astype("float32")
    seen = []
    for worker in range(2):
        for x, _ in make_dataset(cached, labels, batch_size=4, training=True, shard=(2, worker)):
            seen += [int(np.flatnonzero((pixels == image).all(axis=(1, 2, 3)))[0]) for image in x.numpy()]
    assert sorted(seen) == list(range(6))


def test_activation_file_reads_the_rows_it_was_given(tmp_path):
    from core.training.frozen_cache import ActivationBatches, ActivationFile

    rows = np.random.default_rng(0).standard_normal((12, 3, 3, 4)).astype("float16")
    rows.tofile(tmp_path / "x.f16")
    stored = ActivationFile(tmp_path / "x.f16", (3, 3, 4), 12)
    assert stored.shape == rows.shape and len(stored) == 12
    picked = np.array([7, 0, 11, 7])
    np.testing.assert_array_equal(stored[picked], rows[picked])
    in_memory = ActivationBatches(rows, np.arange(12) % 2, batch_size=5, epoch_size=12, seed=1)
    on_disk = ActivationBatches(stored, np.arange(12) % 2, batch_size=5, epoch_size=12, seed=1)
    for i in range(len(in_memory)):
        for a, b in zip(in_memory[i], on_disk[i]):
            np.testing.assert_array_equal(a, b)


def test_the_frozen_cache_is_used_only_within_its_budget(tmp_path, monkeypatch):
    from core.training.frozen_cache import cache_bytes, fits_budget
    from core.models.resnet import build_model, frozen_boundary

    model = build_model("resnet50", 64, None, 0.3, train_from="head")
    boundary = frozen_boundary(model, "conv3")
    assert boundary == "conv2_block3_out"
    # 16 x 16 x 256 float16 values per view: 4 views of 10 training images and 5 validation ones.
    assert cache_bytes(model, boundary, 10, 5) == (4 * 10 + 5) * 16 * 16 * 256 * 2
    images = {"train": [None] * 10, "val": [None] * 5}
    lines = []
    monkeypatch.setenv("COVIDCT_FROZEN_CACHE_GB", "1")
    assert fits_budget(model, boundary, images, tmp_path, lines.append)
    monkeypatch.setenv("COVIDCT_FROZEN_CACHE_GB", "0.001")
    assert not fits_budget(model, boundary, images, tmp_path, lines.append)
    assert "cached on disk" in lines[0] and "over budget, training end to end" in lines[1]
