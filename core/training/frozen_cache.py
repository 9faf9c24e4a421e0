"""The frozen-stage activation cache: the stages below `train_from` give the
same output every epoch for the same input (BatchNorm in inference mode, no
dropout), so their activations are computed once for a few augmented views of
each training image, and only the trained stages run each epoch.

The cache is a float16 file in the run folder, read a batch at a time, so it
costs disk, not memory. It is used only when it fits the budget
(paths.frozen_cache_budget: $COVIDCT_FROZEN_CACHE_GB, at most half the free
disk); a run over the budget trains end to end on the streamed images
instead. Which one a run took, with the arithmetic, is in its log;
docs/data-at-scale.md gives the sizes and compares the two.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from core.training import checkpoint, evidence_penalty
from core.base import paths
from core.runs import storage
from core.runs.train_config import RETIRED
from core.models.resnet import split_at
from core.training.pipeline import balanced_class_weights, make_dataset, reading_errors

# Augmented views per training image in the cache (a retired setting: every run uses this value).
CACHED_VIEWS = RETIRED["cached_views"]
CACHE_FOLDER = "frozen_cache"  # in the run folder, removed when training ends


def cache_bytes(model: keras.Model, boundary: str, n_train: int, n_val: int) -> int:
    """What the cache of `boundary`'s activations would take on disk."""
    per_view = int(np.prod(model.get_layer(boundary).output.shape[1:])) * 2  # float16
    return (CACHED_VIEWS * n_train + n_val) * per_view


def fits_budget(model, boundary, images, run_dir, report) -> bool:
    """Whether to cache `boundary`'s activations, logged with the arithmetic."""
    needed = cache_bytes(model, boundary, len(images["train"]), len(images["val"]))
    budget = paths.frozen_cache_budget(run_dir)
    fits = needed <= budget
    report(f"frozen-stage cache: {needed / 1e9:.1f} GB for {CACHED_VIEWS} views, budget {budget / 1e9:.1f} GB: "
           + ("cached on disk" if fits else "over budget, training end to end on streamed images"))
    return fits


def cached_datasets(model, boundary, images, labels, augment, config, run_dir, report):
    """Run the frozen stages once per augmented view and train the rest on
    those activations: the frozen stages hold most of ResNet-50's compute, and
    they give the same output every epoch for the same input. Returns the
    trainable top model and the train/validation batches of activations."""
    frozen, top = split_at(model, boundary)
    started = time.monotonic()
    storage.set_status(run_dir, "running", phase=f"caching {boundary} activations")
    folder = Path(run_dir) / CACHE_FOLDER
    shutil.rmtree(folder, ignore_errors=True)  # a killed run's partial cache: made again, seeded
    folder.mkdir()
    # With the evidence penalty, the lung fields of each view as augmented, row for row.
    fields = {split: evidence_penalty.LungFields(evidence_penalty.grid(model)) if config.evidence_penalty else None
              for split in ("train", "val")}
    train_x = write_activations(frozen, images["train"], labels["train"], config.batch_size, folder / "train.f16",
                                augment, views=CACHED_VIEWS, seen=fields["train"])
    train_y = np.tile(labels["train"], CACHED_VIEWS)
    checkpoint.kill_point("caching")
    val_x = write_activations(frozen, images["val"], labels["val"], config.batch_size, folder / "val.f16",
                              seen=fields["val"])
    report(f"cached {boundary} activations for {CACHED_VIEWS} augmented views "
           f"({train_x.nbytes / 2**20:.0f} MB on disk) in {time.monotonic() - started:.0f} s")

    found = {split: collected.array() for split, collected in fields.items() if collected is not None}
    if found:
        report(evidence_penalty.found_text(found["train"]))
    train_batches = ActivationBatches(train_x, train_y, config.batch_size, epoch_size=len(labels["train"]),
                                      seed=config.seed, class_weight=balanced_class_weights(labels["train"]),
                                      fields=found.get("train"))
    val_batches = ActivationBatches(val_x, labels["val"], config.batch_size, fields=found.get("val"))
    return top, train_batches, val_batches


def write_activations(frozen: keras.Model, images, labels, batch_size: int, path: Path, augment=None,
                      views: int = 1, seen=None) -> "ActivationFile":
    """Frozen-stage outputs of `views` passes over the streamed images
    (augmented when `augment` is given), as float16 rows of one file.
    `seen`: called with each batch of images as the frozen stages take it."""
    plain = make_dataset(images, labels, batch_size)  # in order, not augmented
    row_shape = None
    with open(path, "wb") as out, reading_errors(images):
        for _ in range(views):
            for batch, _ in plain:
                if augment is not None:
                    batch = augment(batch, training=True)
                if seen is not None:
                    seen(batch)
                result = np.asarray(frozen(batch, training=False), dtype="float16")
                row_shape = result.shape[1:]
                out.write(result.tobytes())
    return ActivationFile(path, row_shape, views * len(images))


def remove_cache(run_dir) -> None:
    shutil.rmtree(Path(run_dir) / CACHE_FOLDER, ignore_errors=True)


class ActivationFile:
    """Rows of a float16 activation file, read on demand (x[rows] -> array),
    so memory holds a batch, not the cache. Reads with pread, not a memory
    map: the page cache keeps the file warm without counting in the process's
    resident memory."""

    dtype = np.dtype("float16")

    def __init__(self, path: Path, row_shape: tuple, rows: int):
        self.path, self.shape = Path(path), (rows, *row_shape)
        self.row_bytes = int(np.prod(row_shape)) * self.dtype.itemsize
        self.fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return len(self) * self.row_bytes

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.atleast_1d(np.arange(len(self))[rows])
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        for i, row in enumerate(rows):
            data = os.pread(self.fd, self.row_bytes, int(row) * self.row_bytes)
            if len(data) != self.row_bytes:
                raise OSError(f"{self.path}: activation cache cut short at row {row}")
            out[i] = np.frombuffer(data, dtype=self.dtype).reshape(self.shape[1:])
        return out

    def __del__(self):
        fd = getattr(self, "fd", None)
        if fd is not None:
            os.close(fd)


class ActivationBatches(keras.utils.PyDataset):
    """Batches of cached activations with one-hot labels (and class weights);
    with `fields` (core.training.evidence_penalty), each batch's inputs are
    (activations, their rows of fields).

    For training, each epoch draws as many samples as there are training
    images, at random from all views, so each epoch mixes augmentations.
    Indexing the array avoids the copies a tf.data shuffle buffer would make."""

    def __init__(self, x, y, batch_size, epoch_size=None, seed=None, class_weight=None, fields=None):
        super().__init__()
        self.x, self.y, self.batch_size, self.fields = x, np.asarray(y), batch_size, fields
        self.epoch_size = epoch_size or len(x)
        self.rng = np.random.default_rng(seed) if epoch_size else None
        self.class_weight = class_weight
        self.on_epoch_end()

    def __len__(self):
        return int(np.ceil(self.epoch_size / self.batch_size))

    def __getitem__(self, i):
        rows = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        labels = self.y[rows]
        inputs = self.x[rows].astype("float32")
        if self.fields is not None:
            inputs = (inputs, self.fields[rows])
        batch = (inputs, np.eye(2, dtype="float32")[labels])
        if self.class_weight:
            batch += (np.array([self.class_weight[c] for c in labels], dtype="float32"),)
        return batch

    def on_epoch_end(self):
        if self.rng is None:
            self.order = np.arange(len(self.x))
        else:
            self.order = self.rng.permutation(len(self.x))[:self.epoch_size]
