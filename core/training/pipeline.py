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

# At intensity_jitter 1, the largest changes drawn: the window's black and white points move by up
# to a quarter of the grey range, gamma goes from exp(-0.5) to exp(0.5), a slice is blended up to
# all the way into its Gaussian blur (sigma 1.5 px), and JPEG quality falls to 30.
WINDOW_SHIFT = 0.25
GAMMA_LOG = 0.5
BLUR_SIGMA = 1.5
LOWEST_JPEG_QUALITY = 30


class RandomIntensity(keras.layers.Layer):
    """Other hospitals' slices come in other windows, contrasts and compressions: each training
    slice gets its own random window (black and white points), gamma, blur and JPEG quality,
    scaled by `strength` (0..1). float32 images in 0..255 in and out; only with training=True."""

    def __init__(self, strength: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.strength, self.seed = float(strength), seed

    def _uniform(self, shape, low, high, offset: int):
        return tf.random.uniform(shape, low, high, seed=None if self.seed is None else self.seed + offset)

    def call(self, images, training=False):
        if not training or not self.strength:
            return images
        count, shift = tf.shape(images)[0], WINDOW_SHIFT * 255 * self.strength
        per_image = tf.stack([count, 1, 1, 1])
        black = self._uniform(per_image, -shift, shift, 0)
        white = self._uniform(per_image, 255 - shift, 255 + shift, 1)
        scaled = tf.clip_by_value((images - black) / (white - black), 0.0, 1.0)
        gamma = tf.exp(self._uniform(per_image, -GAMMA_LOG * self.strength, GAMMA_LOG * self.strength, 2))
        scaled = tf.pow(scaled, gamma)
        weight = self._uniform(per_image, 0.0, self.strength, 3)
        scaled = (1 - weight) * scaled + weight * gaussian_blur(scaled, BLUR_SIGMA)
        lowest = round(100 - (100 - LOWEST_JPEG_QUALITY) * self.strength)
        quality = tf.random.uniform([count], lowest, 101, tf.int32,
                                    seed=None if self.seed is None else self.seed + 4)
        compressed = tf.map_fn(lambda pair: tf.image.adjust_jpeg_quality(pair[0], pair[1]), (scaled, quality),
                               fn_output_signature=tf.float32)
        return tf.reshape(compressed, tf.shape(images)) * 255.0

    def get_config(self):
        return {**super().get_config(), "strength": self.strength, "seed": self.seed}


def gaussian_blur(images, sigma: float):
    """Each channel of a batch blurred by a Gaussian of `sigma` pixels (a 2·ceil(2σ)+1 kernel)."""
    radius = int(np.ceil(2 * sigma))
    line = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel = np.outer(line, line) / np.outer(line, line).sum()
    kernel = tf.constant(np.tile(kernel[:, :, None, None], (1, 1, 3, 1)), tf.float32)
    return tf.nn.depthwise_conv2d(images, kernel, strides=[1, 1, 1, 1], padding="SAME")


def augmentation_layers(rotation: float = 10.0, zoom: float = 0.1, contrast: float = 0.1,
                        flip: bool = True, seed: int | None = None,
                        intensity_jitter: float = 0.0) -> keras.Sequential:
    """Random rotation (+/- `rotation` degrees), zoom, contrast and horizontal
    flip, for float32 images in 0..255; a switch at 0/False leaves its layer
    out. What rotation and zooming out uncover is filled by mirroring the
    image's edge (black fill was tried: docs/experiments.md). `intensity_jitter`:
    RandomIntensity's strength (0: left out)."""
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
    if intensity_jitter:
        layers.append(RandomIntensity(intensity_jitter, seed=layer_seed(10)))
    if not layers:
        layers.append(keras.layers.Identity())  # an empty Sequential cannot be called
    return keras.Sequential(layers, name="augmentation")


def make_dataset(images: CachedImages, labels: np.ndarray, batch_size: int, training: bool = False,
                 augment: keras.Sequential | None = None, seed: int = 0, class_weight: dict | None = None,
                 shard: tuple[int, int] | None = None, batch_map=None) -> tf.data.Dataset:
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
    `batch_map`: a map of (images, labels) batches after augmentation, training or not, that adds what
    the trained model also takes (core.training.evidence_penalty.with_lung_fields: the lung fields).
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
    if batch_map is not None:
        dataset = dataset.map(batch_map, num_parallel_calls=tf.data.AUTOTUNE)
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
    return augmentation_layers(config.rotation, config.zoom, config.contrast, config.flip, seed=seed,
                               intensity_jitter=config.intensity_jitter)
