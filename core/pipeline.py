"""Training input: the augmentation layers and the tf.data pipeline of
decoded images."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def augmentation_layers(rotation: float = 10.0, zoom: float = 0.1, contrast: float = 0.1,
                        flip: bool = True, seed: int | None = None) -> keras.Sequential:
    """Random rotation (+/- `rotation` degrees), zoom, contrast and horizontal
    flip, for float32 images in 0..255; a switch at 0/False leaves its layer
    out. What rotation and zooming out uncover is filled by mirroring the
    image's edge (black fill was tried: docs/experiments.md)."""
    def layer_seed(offset):
        # Distinct seeds, so the layers do not draw the same random numbers.
        return None if seed is None else seed + offset

    layers = []
    if rotation:
        layers.append(keras.layers.RandomRotation(rotation / 360, fill_mode="reflect", seed=layer_seed(0)))
    if zoom:
        layers.append(keras.layers.RandomZoom(zoom, fill_mode="reflect", seed=layer_seed(1)))
    if contrast:
        layers.append(keras.layers.RandomContrast(contrast, value_range=(0, 255), seed=layer_seed(2)))
    if flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=layer_seed(3)))
    if not layers:
        layers.append(keras.layers.Identity())  # an empty Sequential cannot be called
    return keras.Sequential(layers, name="augmentation")


def make_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, training: bool = False,
                 augment: keras.Sequential | None = None, seed: int = 0) -> tf.data.Dataset:
    """(float32 images 0..255 (B, S, S, 3), one-hot float32 labels (B, 2)) batches.

    Training: shuffled (seeded, reshuffled each epoch) and augmented per batch.
    Not training: batches in the given order, never augmented.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be N x S x S x 3, got shape {images.shape}")
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got {np.unique(labels)[:10]}")

    dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).map(
        lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, 2)),
        num_parallel_calls=tf.data.AUTOTUNE)
    if training and augment is not None:
        dataset = dataset.map(lambda x, y: (augment(x, training=True), y),
                              num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def balanced_class_weights(labels: np.ndarray) -> dict[int, float]:
    counts = np.bincount(labels, minlength=2)
    return {c: float(len(labels) / (2 * max(counts[c], 1))) for c in (0, 1)}
