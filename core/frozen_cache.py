"""The frozen-stage activation cache: the stages below `train_from` give the
same output every epoch for the same input (BatchNorm in inference mode, no
dropout), so their activations are computed once for a few augmented views of
each training image, and only the trained stages run each epoch."""
from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from core import checkpoint, runs
from core.model import split_at
from core.pipeline import balanced_class_weights

# Augmented views per training image in the cache.
CACHED_VIEWS = 4


def cached_datasets(model, boundary, images, labels, augment, config, run_dir, report):
    """Run the frozen stages once per augmented view and train the rest on
    those activations: the frozen stages hold most of ResNet-50's compute, and
    they give the same output every epoch for the same input (BatchNorm in
    inference mode, no dropout). Returns the trainable top model and the
    train/validation batches of activations."""
    frozen, top = split_at(model, boundary)
    started = time.monotonic()
    runs.set_status(run_dir, "running", phase=f"caching {boundary} activations")
    train_x = activations(frozen, images["train"], config.batch_size, augment, views=CACHED_VIEWS)
    train_y = np.tile(labels["train"], CACHED_VIEWS)
    checkpoint.kill_point("caching")
    val_x = activations(frozen, images["val"], config.batch_size)
    report(f"cached {boundary} activations for {CACHED_VIEWS} augmented views "
           f"({train_x.nbytes / 2**20:.0f} MB) in {time.monotonic() - started:.0f} s")

    train_batches = ActivationBatches(train_x, train_y, config.batch_size, epoch_size=len(labels["train"]),
                                      seed=config.seed, class_weight=balanced_class_weights(labels["train"]))
    val_batches = ActivationBatches(val_x, labels["val"], config.batch_size)
    return top, train_batches, val_batches


def activations(frozen: keras.Model, images: np.ndarray, batch_size: int, augment=None, views: int = 1) -> np.ndarray:
    """Frozen-stage outputs of `views` passes over the images (augmented when
    `augment` is given), as float16 to halve the memory, written into one
    array allocated up front."""
    out = None
    for view in range(views):
        for start in range(0, len(images), batch_size):
            batch = tf.convert_to_tensor(images[start:start + batch_size], "float32")
            if augment is not None:
                batch = augment(batch, training=True)
            result = np.asarray(frozen(batch, training=False), dtype="float16")
            if out is None:
                out = np.empty((views * len(images), *result.shape[1:]), dtype="float16")
            offset = view * len(images) + start
            out[offset:offset + len(result)] = result
    return out


class ActivationBatches(keras.utils.PyDataset):
    """Batches of cached activations with one-hot labels (and class weights).

    For training, each epoch draws as many samples as there are training
    images, at random from all views, so each epoch mixes augmentations.
    Indexing the array avoids the copies a tf.data shuffle buffer would make."""

    def __init__(self, x, y, batch_size, epoch_size=None, seed=None, class_weight=None):
        super().__init__()
        self.x, self.y, self.batch_size = x, np.asarray(y), batch_size
        self.epoch_size = epoch_size or len(x)
        self.rng = np.random.default_rng(seed) if epoch_size else None
        self.class_weight = class_weight
        self.on_epoch_end()

    def __len__(self):
        return int(np.ceil(self.epoch_size / self.batch_size))

    def __getitem__(self, i):
        rows = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        labels = self.y[rows]
        batch = (self.x[rows].astype("float32"), np.eye(2, dtype="float32")[labels])
        if self.class_weight:
            batch += (np.array([self.class_weight[c] for c in labels], dtype="float32"),)
        return batch

    def on_epoch_end(self):
        if self.rng is None:
            self.order = np.arange(len(self.x))
        else:
            self.order = self.rng.permutation(len(self.x))[:self.epoch_size]
