"""Grad-CAM and Grad-CAM++ heatmaps (through tf-keras-vis) and their overlays.

Follows the keras-io "Grad-CAM class activation visualization" example: the
heatmap is the last conv block's activations weighted by the gradient of the
class score, so it shows where the model looked for that class.
"""
from __future__ import annotations

import threading

import keras
import numpy as np
import tensorflow as tf
from tf_keras_vis.gradcam import Gradcam
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
from tf_keras_vis.utils.scores import CategoricalScore

from core.models.resnet import LAST_CONV_LAYER

METHODS = ("gradcam", "gradcam++")


class CompiledModel(keras.layers.Layer):
    """A Keras model run as one compiled TensorFlow function, through which
    no gradient flows.

    tf-keras-vis calls the explained model eagerly, layer by layer, and the
    per-layer overhead dominates. Wrapped in this layer, the backbone up to
    the explained layer runs as one graph (docs/benchmarks.md has the
    timings). Grad-CAM needs the gradient of the class
    score with respect to this layer's output only, so the backward pass stops
    here instead of going down to the image (which would triple the time)."""

    def __init__(self, model: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self._run = tf.function(lambda images: model(images, training=False), reduce_retracing=True)

    def call(self, images):
        @tf.custom_gradient
        def forward(images):
            def no_gradient(upstream, variables=None):
                return tf.zeros_like(images), [None] * len(variables or [])
            return self._run(images), no_gradient
        return forward(images)

    def compute_output_shape(self, input_shape):
        return self.model.compute_output_shape(input_shape)


def _explained_model(model: keras.Model, layer: str) -> keras.Model:
    """image -> `layer` activations (compiled, named `layer`) -> class logits.

    The head ends in a copy of the model's last layer with a linear
    activation, so gradients are of the logit rather than of a saturated
    probability (tf-keras-vis' ReplaceToLinear, without changing the app's
    softmax model). Every other layer and weight is shared with `model`: the
    explained model costs no memory, and nothing is cloned, which would fail
    on a Lambda layer under Keras 3's safe mode."""
    head = model.layers[-1]
    linear_head = head.__class__.from_config({**head.get_config(), "activation": "linear"})
    logits = linear_head(head.input)
    linear_head.set_weights(head.get_weights())

    boundary = model.get_layer(layer).output
    features = keras.Model(model.inputs, boundary)
    top = keras.Model(boundary, logits)
    images = keras.Input(model.inputs[0].shape[1:])
    return keras.Model(images, top(CompiledModel(features, name=layer)(images)))


class Explainer:
    """Explains one Keras model, repeatedly: the tf-keras-vis objects are
    built once, on the model of `_explained_model`."""

    def __init__(self, model, layer: str = LAST_CONV_LAYER):
        model.get_layer(layer)  # fail early, with Keras' message, on a wrong name
        self.layer = layer
        explained = _explained_model(model, layer)
        self._visualizers = {
            "gradcam": Gradcam(explained, clone=False),
            "gradcam++": GradcamPlusPlus(explained, clone=False),
        }
        # One explanation at a time: Streamlit serves each session from its own thread.
        self._lock = threading.Lock()

    def heatmaps(self, images, method: str = "gradcam", class_index: int = 1) -> np.ndarray:
        """Heatmaps (N, S, S) float32 in [0, 1] for images (N, S, S, 3) float32 in 0..255.

        Each heatmap is normalised on its own; a map with no positive evidence stays all zero.
        """
        if method not in self._visualizers:
            raise ValueError(f"Unknown method {method!r}: use one of {METHODS}")
        images = np.asarray(images, dtype=np.float32)
        with self._lock:
            cams = self._visualizers[method](
                CategoricalScore(class_index),
                images,
                penultimate_layer=self.layer,
                # The explained layer is the compiled backbone's output: use it
                # as named instead of letting tf-keras-vis seek a Conv layer.
                seek_penultimate_conv_layer=False,
            )
        return np.clip(np.nan_to_num(cams), 0, 1).astype(np.float32)


