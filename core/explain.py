"""Grad-CAM and Grad-CAM++ heatmaps (through tf-keras-vis) and their overlays.

Follows the keras-io "Grad-CAM class activation visualization" example: the
heatmap is the last conv block's activations weighted by the gradient of the
class score, so it shows where the model looked for that class.
"""
from __future__ import annotations

import threading

import cv2
import keras
import numpy as np
from tf_keras_vis.gradcam import Gradcam
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
from tf_keras_vis.utils.scores import CategoricalScore

METHODS = ("gradcam", "gradcam++")


def _copy_head(model: keras.Model) -> keras.Model:
    """`model` with a copy of its last layer: every other layer (and weight) is shared.

    ReplaceToLinear then changes only the copy's activation, leaving the app's
    softmax model untouched. tf-keras-vis would otherwise clone the whole model,
    which doubles its weights and fails on a Lambda layer under Keras 3's safe mode.
    The copy is built on the model's own graph tensors, because tf-keras-vis
    reads the explained layer's `.output`, which is its first (original) use.
    """
    head = model.layers[-1]
    head_copy = head.__class__.from_config(head.get_config())
    outputs = head_copy(head.input)
    head_copy.set_weights(head.get_weights())
    return keras.Model(model.inputs, outputs)


class Explainer:
    """Explains one Keras model, repeatedly.

    The tf-keras-vis objects are built once, on a model whose softmax is
    replaced by a linear activation (ReplaceToLinear), so gradients are of the
    logit rather than of a saturated probability.
    """

    def __init__(self, model, layer: str = "conv5_block3_out"):
        model.get_layer(layer)  # fail early, with Keras' message, on a wrong name
        self.layer = layer
        linear_model = _copy_head(model)
        self._visualizers = {
            "gradcam": Gradcam(linear_model, model_modifier=ReplaceToLinear(), clone=False),
            "gradcam++": GradcamPlusPlus(linear_model, model_modifier=ReplaceToLinear(), clone=False),
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
                # conv5_block3_out is an activation, not a Conv layer: use it as
                # named instead of letting tf-keras-vis seek the previous Conv.
                seek_penultimate_conv_layer=False,
            )
        return np.clip(np.nan_to_num(cams), 0, 1).astype(np.float32)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4,
            colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """Colour `heatmap` (any size, values in [0, 1]) and blend it over `image`.

    image is uint8 H x W x 3 RGB at its own size and aspect ratio (or H x W
    grayscale); the heatmap is resized to it. alpha is the heatmap's opacity:
    0 gives the image, 1 the coloured heatmap. Returns uint8 H x W x 3 RGB.
    """
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    height, width = image.shape[:2]
    heatmap = cv2.resize(np.asarray(heatmap, dtype=np.float32), (width, height),
                         interpolation=cv2.INTER_LINEAR)
    heatmap = np.uint8(np.round(255 * np.clip(heatmap, 0, 1)))
    # OpenCV colour maps are BGR.
    coloured = cv2.cvtColor(cv2.applyColorMap(heatmap, colormap), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(coloured, alpha, image, 1 - alpha, 0)
