"""The evidence penalty ("right for the right reasons", issue 28): while
training, the loss gains `evidence_penalty` times the share of each slice's
Grad-CAM evidence that lies outside its lung fields.

The map is Grad-CAM at the last conv stage (LAST_CONV_LAYER), of the score
the softmax decides on: the true class's logit minus the other's (for two
classes, the gradient of log p(true class) is (1 - p) times this one's). The
score's gradient with respect to that stage's activations, averaged over
space, weights its channels; the magnitude of their sum, normalised to sum 1,
is the map, and its mass outside the lung fields is what the penalty counts.
Ways of lowering the share without moving the evidence are closed:
Grad-CAM of the class logit alone (core.inference.explain's) made
non-negative was tried first, and a tiny model trained with it blanked its
maps (no positive evidence anywhere: share 0) while its decision still came
from a mark outside the lungs. The magnitude counts evidence against the
class too; the difference leaves out what both logits share, which changes
no probability; normalising means shrinking a map does not help, and a map
with no mass counts as outside (EMPTY_MAP_MASS).
The map's gradient comes from a GradientTape nested in the training step's,
so the penalty trains the weights that make the map (a second derivative
through the head only: GAP and a dense layer, cheap).

The lung fields are those lung masking keeps (core.data.lung.kept_fields:
each lung's convex hull, widened by MASK_DILATION), found on each slice as
augmented, so they follow its rotation, zoom and flip, and averaged over
each cell of the last conv stage's grid (7 x 7 at 224 px): a cell half in
the lungs counts half outside. A slice whose lungs are not found gets fields
of ones (no penalty), as lung masking leaves such a slice whole.

Every batch the penalised model sees, training and validation, carries the
fields with its images ((images, fields), labels[, weights]): the frozen-stage
cache keeps them beside its activations (core.training.frozen_cache), the
streamed pipeline adds them per batch (with_lung_fields). Validation reports
the share outside as val_evidence_outside, its loss and metrics unchanged;
evaluation and prediction use the plain model, and model.keras is that plain
model (core.training.fit saves the whole model, never this wrapper).
"""
from __future__ import annotations

import cv2
import keras
import numpy as np
import tensorflow as tf
from keras import ops

from core.data import lung
from core.models.resnet import LAST_CONV_LAYER, class_logits

OUTSIDE_METRIC = "evidence_outside"  # history.csv's column (val_evidence_outside on validation)
# Every map is counted as though it also had this much mass outside the lungs (in logits: with the
# head's global average pooling a cell's value is the logit difference it contributes). A map that
# decides nothing (mass near 0) then scores near 1, not 0: a tiny model penalised without it
# escaped by deciding from nothing (its maps went blank and it predicted 0.5 for every slice). Against
# the masses of a decision (several logits) it moves a share by a few hundredths at most.
EMPTY_MAP_MASS = 0.1


def grid(model: keras.Model) -> tuple[int, int]:
    """(rows, columns) of the last conv stage's grid, on which the penalty's fields are given."""
    return tuple(int(side) for side in model.get_layer(LAST_CONV_LAYER).output.shape[1:3])


def lung_fields(images: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(N, rows, columns) float32: the share of each grid cell inside each slice's kept lung fields
    (core.data.lung.kept_fields); ones for a slice whose lungs are not found. `images`: (N, S, S, 3),
    0..255, as the model sees them (augmented)."""
    rows, columns = shape
    fields = np.ones((len(images), rows, columns), np.float32)
    for i, image in enumerate(np.clip(np.rint(np.asarray(images)), 0, 255).astype(np.uint8)):
        lungs = lung.lung_mask(image)
        if lungs.any():
            kept = lung.kept_fields(lungs).astype(np.float32)
            # Area averaging: each cell's share (INTER_AREA also takes a size the grid does not divide).
            fields[i] = cv2.resize(kept, (columns, rows), interpolation=cv2.INTER_AREA)
    return fields


def with_lung_fields(shape: tuple[int, int]):
    """A tf.data map for batches (images, labels): ((images, fields), labels), fields found on the
    images as they come (after augmentation)."""
    def add(images, labels):
        fields = tf.numpy_function(lambda batch: lung_fields(batch, shape), [images], tf.float32)
        fields.set_shape([None, *shape])
        return (images, fields), labels
    return add


def found_text(fields: np.ndarray) -> str:
    """The run log's line on the fields of the cached training views."""
    found = float((fields < 1).any(axis=(1, 2)).mean()) if len(fields) else 0.0
    return (f"evidence penalty: lung fields found on {found:.0%} of {len(fields)} training views "
            "(the others are not penalised)")


class LungFields:
    """Collects the lung fields of batches of slices, as the frozen-stage cache augments them."""

    def __init__(self, shape: tuple[int, int]):
        self.shape, self.parts = shape, []

    def __call__(self, images) -> None:
        self.parts.append(lung_fields(np.asarray(images), self.shape))

    def array(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros((0, *self.shape), np.float32)


def evidence_map(features, gradients):
    """The magnitude of Grad-CAM from the last conv stage's activations and a score's gradient with
    respect to them (both (N, rows, columns, channels)): (N, rows, columns)."""
    channel_weights = ops.mean(gradients, axis=(1, 2), keepdims=True)
    return ops.abs(ops.sum(channel_weights * features, axis=-1))


def outside_share(cam, fields):
    """(N,): the share of each map's mass outside its lung fields (fields: each cell's share inside,
    0..1), with EMPTY_MAP_MASS counted outside: 1 for a map with no mass; 0 for a slice with nothing
    outside its fields (no lungs found: fields of ones)."""
    total = ops.sum(cam, axis=(1, 2))
    outside = ops.sum(cam * (1.0 - fields), axis=(1, 2))
    share = (outside + EMPTY_MAP_MASS) / (total + EMPTY_MAP_MASS)
    return ops.where(ops.min(fields, axis=(1, 2)) < 1.0, share, ops.zeros_like(share))


class EvidencePenalty(keras.Model):
    """Trains `classifier` (above `boundary`, the frozen-stage cache's layer, when given) on
    cross-entropy plus `weight` x the share of its evidence map outside the lungs. Its batches
    are ((inputs, fields), one-hot labels[, sample weights]). "loss" stays the cross-entropy,
    comparable with val_loss; the share is logged as evidence_outside."""

    def __init__(self, classifier: keras.Model, weight: float, boundary: str | None = None, **kwargs):
        super().__init__(name=f"{classifier.name}_evidence_penalty", **kwargs)
        self.weight = float(weight)
        # The classifier's own layers with a second output, held alone so that each weight is tracked
        # once. Made from the whole classifier's tensors: a model cut at an inner layer (split_at's
        # top) holds a clone of the graph, from which the last conv stage's output cannot be reached.
        inputs = classifier.get_layer(boundary).output if boundary else classifier.input
        # A cache at the last conv stage itself (train_from "head"): its activations are the inputs.
        self.features_given = boundary == LAST_CONV_LAYER
        outputs = [] if self.features_given else [classifier.get_layer(LAST_CONV_LAYER).output]
        self.evidence = keras.Model(inputs, [*outputs, classifier.output])
        self.outside = keras.metrics.Mean(name=OUTSIDE_METRIC)
        # Its one layer is built, so it is: the run's checkpoints save its weights before any call.
        self.built = True

    def call(self, data, training=False):
        return self.features_and_probabilities(data[0], training)[1]

    def features_and_probabilities(self, inputs, training: bool):
        if self.features_given:
            return inputs, self.evidence(inputs, training=training)
        return self.evidence(inputs, training=training)

    def forward(self, data, labels, training: bool):
        """(probabilities, each slice's share of evidence outside its lung fields)."""
        inputs, fields = data
        features, probabilities = self.features_and_probabilities(inputs, training)
        with tf.GradientTape() as inner:  # nested in train_step's tape: the map itself is trained
            inner.watch(features)
            # One-hot labels -> +1 for the true class's logit, -1 for the other's.
            scores = ops.sum(class_logits(self.evidence, features) * (2.0 * labels - 1.0), axis=-1)
        cam = evidence_map(features, inner.gradient(scores, features))
        return probabilities, outside_share(cam, fields)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync  # Keras scales the loss the same way
        with tf.GradientTape() as tape:
            probabilities, outside = self.forward(x, y, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=probabilities, sample_weight=sample_weight, training=True)
            total = self.optimizer.scale_loss(loss + self.weight * ops.mean(outside) / replicas)
        trainable = self.trainable_weights
        self.optimizer.apply_gradients(zip(tape.gradient(total, trainable), trainable))
        return self.logged(x, y, probabilities, sample_weight, loss * replicas, outside)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        probabilities, outside = self.forward(x, y, training=False)
        loss = self.compute_loss(x=x, y=y, y_pred=probabilities, sample_weight=sample_weight, training=False)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return self.logged(x, y, probabilities, sample_weight, loss * replicas, outside)

    def logged(self, x, y, probabilities, sample_weight, loss, outside) -> dict:
        """The step's metrics, as Keras' own steps log them, with the share outside."""
        self.outside.update_state(outside)
        for metric in self.metrics:
            if metric.name == "loss":  # Keras' loss tracker, which its own steps update
                metric.update_state(loss, sample_weight=ops.shape(outside)[0])
        return self.compute_metrics(x, y, probabilities, sample_weight=sample_weight)


def for_training(fitted: keras.Model, weight: float, model: keras.Model | None = None,
                 boundary: str | None = None) -> keras.Model:
    """What fit trains: `fitted` (the whole `model`, or its part above `boundary`) itself, or with a
    weight the EvidencePenalty that trains the same layers."""
    return EvidencePenalty(model or fitted, weight, boundary) if weight else fitted


def streamed_options(model: keras.Model, weight: float) -> dict:
    """make_dataset's options for streamed batches: the lung fields, when the penalty is on."""
    return {"batch_map": with_lung_fields(grid(model))} if weight else {}
