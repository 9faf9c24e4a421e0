"""The classifier: a pretrained ResNet with a new 2-class head, frozen by stage.

The backbone is an ImageNet ResNet (keras.applications) or the CT-pretrained
ResNet-152 (core.models.ct_backbone). The model takes float RGB images in 0..255 at
`input_size` and returns softmax probabilities (N, 2), index 1 being the
positive class. The backbone's preprocessing is a layer inside the model, so a
saved model is all one needs to predict.

The backbone is built on the model's own input tensor, so its layers are layers
of the model itself (a flat graph): Grad-CAM can then reach `conv5_block3_out`.
"""
from __future__ import annotations

import os

import keras
import numpy as np

from core.models import ct_backbone
from core.runs.train_config import BACKBONES, CT_BACKBONES, IMAGENET_BACKBONES, TRAIN_FROM

IMAGENET_MODELS = {"resnet50": keras.applications.ResNet50, "resnet101": keras.applications.ResNet101,
                   "resnet152": keras.applications.ResNet152}
assert set(IMAGENET_MODELS) == set(IMAGENET_BACKBONES)
STAGES = ("conv1", "conv2", "conv3", "conv4", "conv5")
LAST_CONV_LAYER = "conv5_block3_out"
HEAD_LAYERS = ("head_pool", "head_dropout", "head_dense")


@keras.saving.register_keras_serializable(package="covidct")
class ImageNetPreprocess(keras.layers.Layer):
    """keras.applications.resnet.preprocess_input as a layer (RGB 0..255 ->
    BGR minus the ImageNet mean). A named layer rather than a Lambda, so that
    models load with safe_mode=True."""

    def call(self, images):
        return keras.applications.resnet.preprocess_input(images)


@keras.saving.register_keras_serializable(package="covidct")
class CTWindow(keras.layers.Layer):
    """The CT ResNet's input recipe as a layer: 0..255 grey levels -> [0, 1].

    It was trained on Hounsfield units clipped to [-1000, 200] and scaled to
    [0, 1], one channel repeated to three. Our slices are 8-bit images already
    windowed, so the grey levels are mapped back to HU through the window they
    were most likely shown in, `source_window` (width, level): the lung window
    W1500/L-600 that core.data.images applies to DICOM (0 = -1350 HU, 255 = 150 HU),
    the usual lung window of CT figures. Against taking 0..255 as [0, 1]
    directly (a W1200/L-400 source), the stored BatchNorm statistics agree
    slightly better with it on COVID-CT slices (docs/ct_backbone.md). The
    three channels are averaged first, so that colour marks weigh as grey."""

    def __init__(self, source_window=(1500.0, -600.0), transpose: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.source_window = tuple(float(v) for v in source_window)
        self.transpose = bool(transpose)

    def call(self, images):
        width, level = self.source_window
        grey = keras.ops.mean(images, axis=-1, keepdims=True)
        hounsfield = level - width / 2 + grey * (width / 255.0)
        scaled = (keras.ops.clip(hounsfield, -1000.0, 200.0) + 1000.0) / 1200.0
        if self.transpose:
            scaled = keras.ops.transpose(scaled, (0, 2, 1, 3))
        return keras.ops.repeat(scaled, 3, axis=-1)

    def get_config(self):
        return {**super().get_config(), "source_window": list(self.source_window), "transpose": self.transpose}


def build_model(backbone: str = "resnet50", input_size: int = 224, weights: str | None = None,
                dropout: float = 0.3, train_from: str = "conv5") -> keras.Model:
    """A backbone topped by pooling -> dropout -> Dense(2).

    An ImageNet ResNet from keras.applications takes its weights from a file
    path, "imagenet" (Keras' download) or None (random). A CT backbone takes
    the CT weights whatever `weights` names (an ImageNet file cannot fit it),
    except None: random, like the others."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    inputs = keras.Input((input_size, input_size, 3), name="image")
    if backbone in CT_BACKBONES:
        x = CTWindow(transpose=CT_BACKBONES[backbone], name="ct_window")(inputs)
        base = ct_backbone.backbone_model(inputs, x)
        if weights is not None:
            ct_backbone.load_into(base)
    else:
        if weights not in (None, "imagenet") and not os.path.exists(weights):
            raise ValueError(f"{weights}: weights file not found (set --weights or $COVIDCT_WEIGHTS)")
        x = ImageNetPreprocess(name="imagenet_preprocess")(inputs)
        try:
            base = IMAGENET_MODELS[backbone](include_top=False, weights=weights, input_tensor=x)
        except ValueError as error:  # e.g. a ResNet-50 file given for ResNet-101
            raise ValueError(f"{weights}: cannot load into {backbone}: {error}") from error

    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(base.output)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    # float32 probabilities whatever the dtype policy (Keras' mixed-precision advice).
    outputs = keras.layers.Dense(2, activation="softmax", dtype="float32", name="head_dense")(x)
    model = keras.Model(inputs, outputs, name=f"{backbone}_covidct")
    set_trainable(model, train_from)
    return model


def layer_stage(name: str) -> str | None:
    """The ResNet stage a layer belongs to ("conv1".."conv5"), None for others."""
    if name.startswith("pool1"):
        return "conv1"
    prefix = name.split("_")[0]
    return prefix if prefix in STAGES else None


def set_trainable(model: keras.Model, train_from: str) -> None:
    """Train the head and the stages from `train_from` up; freeze the rest.

    A frozen BatchNormalization layer runs in inference mode in Keras 3, so its
    ImageNet statistics stay intact. BatchNorm stays frozen in the trained
    stages too (the Keras fine-tuning guide's advice for small datasets: batch
    statistics of a few CT slices are noisy)."""
    if train_from not in TRAIN_FROM:
        raise ValueError(f"unknown train_from {train_from!r}; choose one of {', '.join(TRAIN_FROM)}")
    first_trained = STAGES.index(train_from) if train_from != "head" else len(STAGES)
    for layer in model.layers:
        stage = layer_stage(layer.name)
        if stage is None:
            layer.trainable = layer.name in HEAD_LAYERS or not layer.weights
            continue
        is_batchnorm = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = STAGES.index(stage) >= first_trained and not is_batchnorm


def frozen_boundary(model: keras.Model, train_from: str) -> str | None:
    """Name of the last layer that stays frozen when training from `train_from`
    (the output of the stage below it), or None when nothing is frozen."""
    first_trained = STAGES.index(train_from) if train_from != "head" else len(STAGES)
    boundary = None
    for layer in model.layers:
        stage = layer_stage(layer.name)
        if stage is not None and STAGES.index(stage) < first_trained:
            boundary = layer.name
    return boundary if first_trained > 0 else None


def split_at(model: keras.Model, layer_name: str) -> tuple[keras.Model, keras.Model]:
    """Two models sharing the layers (and weights) of `model`: image ->
    `layer_name` activations, and those activations -> probabilities."""
    boundary = model.get_layer(layer_name).output
    return keras.Model(model.input, boundary), keras.Model(boundary, model.output)


def load_model(path) -> keras.Model:
    """Load a saved .keras model without running code stored in it."""
    return keras.models.load_model(path, compile=False, safe_mode=True)


def predict_proba(model: keras.Model, images: np.ndarray, batch_size: int = 32, flip_tta: bool = False,
                  with_features: bool = False):
    """Positive-class probability for a batch of 0..255 images (N, S, S, 3).

    Test-time augmentation (`flip_tta`) averages with the left-right mirrored
    slice, a view the model was trained on. The views of a few images go
    through the model as one batch of at most `batch_size` (one call for a
    single upload). Uses predict_on_batch, Keras' compiled forward pass:
    model.predict builds a tf.data pipeline per call, and an eager model(x)
    dispatches ResNet's ~180 layers one by one (0.25 s for a single slice).

    with_features: `model` is a features_model; returns (probabilities,
    pooled backbone features of each slice itself, not of its views), at no
    extra forward pass."""
    images = np.asarray(images, dtype="float32")
    if not len(images):
        empty = np.zeros((0,), "float32")
        return (empty, np.zeros((0, model.outputs[1].shape[-1]), "float32")) if with_features else empty
    chunk = max(1, batch_size // tta_view_count(flip_tta))
    probs, features = [], []
    for start in range(0, len(images), chunk):
        views = tta_views(images[start:start + chunk], flip_tta)
        outputs = model.predict_on_batch(np.concatenate(views))
        if with_features:
            outputs, pooled = outputs
            features.append(np.asarray(pooled)[:len(views[0])])
        prob = np.asarray(outputs)[:, 1]
        probs.append(prob.reshape(len(views), -1).mean(axis=0))
    return (np.concatenate(probs), np.concatenate(features)) if with_features else np.concatenate(probs)


def features_model(model: keras.Model) -> keras.Model:
    """The same model (shared layers and weights) with a second output: the
    globally average-pooled last conv stage, what the head classifies (what
    core.inference.ood compares with the training slices')."""
    return keras.Model(model.inputs, [model.output, model.get_layer("head_pool").output])


def class_logits(model: keras.Model, features):
    """The head's class logits (before its softmax) of last-conv-stage `features`, as at inference
    (no dropout), sharing the head's weights: what Grad-CAM differentiates (core.inference.explain
    gives its copy of the head a linear activation for the same reason: a saturated softmax has no
    gradient to show)."""
    dense = model.get_layer("head_dense")
    return keras.ops.matmul(model.get_layer("head_pool")(features), dense.kernel) + dense.bias


def tta_view_count(flip: bool) -> int:
    """How many views tta_views returns: the slice, and its mirror with `flip`."""
    return 1 + flip


def tta_views(batch: np.ndarray, flip: bool) -> list[np.ndarray]:
    """The batch itself, then its mirror with `flip` (same shape)."""
    return [batch, np.ascontiguousarray(batch[:, :, ::-1])] if flip else [batch]
