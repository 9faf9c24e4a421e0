"""Training input: the augmentation layers and the tf.data pipeline that
streams decoded images from the image cache."""
from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf

from core.data.image_cache import CachedImages
from core.data.limits import ImageReadError
from core.runs.train_config import TrainConfig


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


def make_dataset(images: CachedImages, labels: np.ndarray, batch_size: int, training: bool = False,
                 augment: keras.Sequential | None = None, seed: int = 0, class_weight: dict | None = None,
                 shard: tuple[int, int] | None = None) -> tf.data.Dataset:
    """(float32 images 0..255 (B, S, S, 3), one-hot float32 labels (B, 2)[,
    sample weights (B,) from `class_weight`]) batches, streamed from the image
    cache (core.data.image_cache): only the batches in flight are in memory,
    whatever the number of images.

    Training: shuffled (seeded, reshuffled each epoch) and augmented per batch.
    The shuffle is of the file list, not of pixels, so it covers the whole
    split at a few bytes per image. Not training: batches in the given order,
    never augmented. `shard` = (workers, this worker's index): each worker of
    a multi-worker run reads only its share of the files (training only;
    up to workers - 1 images sit out each epoch, a different few each time).
    """
    labels = np.asarray(labels)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got {np.unique(labels)[:10]}")

    size = images.size
    dataset = tf.data.Dataset.from_tensor_slices((list(images.entries), list(images.sources),
                                                  labels.astype(np.int32)))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    if shard is not None:
        # Every worker draws the same seeded order and keeps its share of it:
        # equal shares, or the workers' batch counts differ and a collective waits forever.
        workers, worker = shard
        dataset = dataset.take(len(images) // workers * workers).shard(workers, worker)

    def read(entry, source, label):
        raw = tf.io.decode_raw(tf.io.read_file(entry), tf.uint8)
        # A damaged entry names its image file (reading_errors turns this into one line).
        whole = tf.debugging.Assert(tf.equal(tf.size(raw), size * size * 3),
                                    ["decoded copy damaged:", source, entry])
        with tf.control_dependencies([whole]):
            return tf.reshape(raw, (size, size, 3)), label

    dataset = dataset.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size).map(
        lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, 2)),
        num_parallel_calls=tf.data.AUTOTUNE)
    if training and augment is not None:
        dataset = dataset.map(lambda x, y: (augment(x, training=True), y),
                              num_parallel_calls=tf.data.AUTOTUNE)
    if class_weight is not None:  # what fit's class_weight does, kept in the data for tf.distribute
        weights = tf.constant([class_weight[0], class_weight[1]], tf.float32)
        dataset = dataset.map(lambda x, y: (x, y, tf.gather(weights, tf.argmax(y, axis=1))))
    return dataset.prefetch(tf.data.AUTOTUNE)


def distributed_training_dataset(strategy: tf.distribute.Strategy, images: CachedImages, labels: np.ndarray,
                                 global_batch: int, **options):
    """The training batches of a multi-worker run: each worker builds its own
    pipeline over its share of the files, batched per replica, so together
    they make the global batch one device would have taken (options: those
    of make_dataset)."""
    def per_worker(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return make_dataset(images, labels, context.get_per_replica_batch_size(global_batch), training=True,
                            shard=(context.num_input_pipelines, context.input_pipeline_id), **options)
    return strategy.distribute_datasets_from_function(per_worker)


@contextlib.contextmanager
def reading_errors(*image_sets: CachedImages):
    """Turn TensorFlow's error for a cache entry that went missing or was
    damaged while streaming into ImageReadError("<image file>: <problem>")."""
    try:
        yield
    except tf.errors.OpError as error:
        message = str(error.message)
        for images in image_sets:
            source = images.source_of(message)
            if source is not None:
                entry = images.entries[images.sources.index(source)]
                problem = "is damaged" if "damaged" in message else "cannot be read"
                raise ImageReadError(f"{source}: its decoded copy {entry} {problem} (changed while training?); "
                                     "run again to decode it again") from None
        raise


def balanced_class_weights(labels: np.ndarray) -> dict[int, float]:
    counts = np.bincount(labels, minlength=2)
    return {c: float(len(labels) / (2 * max(counts[c], 1))) for c in (0, 1)}


def augmentation(config: TrainConfig, seed: int | None = None) -> keras.Sequential:
    """The config's training augmentation (core.training.pipeline.augmentation_layers)."""
    return augmentation_layers(config.rotation, config.zoom, config.contrast, config.flip, seed=seed)
