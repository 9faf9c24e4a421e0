"""Grad-CAM heatmaps as pictures: coloured and blended over the slice, and
the colour scale they are read with. No TensorFlow: a page that only shows
heatmaps does not load it."""
from __future__ import annotations

import cv2
import numpy as np


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


def colour_bar(width: int = 256, height: int = 14, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """The heatmaps' colour scale as a strip, low (left) to high (right):
    uint8 height x width x 3 RGB, the colours overlay() draws."""
    ramp = np.tile(np.linspace(0, 255, width).round().astype(np.uint8), (height, 1))
    return cv2.cvtColor(cv2.applyColorMap(ramp, colormap), cv2.COLOR_BGR2RGB)
