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


# A map with less than this share of its mass inside the lung fields shows evidence that lies
# mostly elsewhere (the mediastinum, the spine, the table, a figure's caption).
MOSTLY_OUTSIDE = 0.5
OUTSIDE_NOTE = ("The model's evidence lies mostly outside the lungs: do not read this map as the place of "
                "a lesion.")


def lung_focus(heatmap: np.ndarray, mask: np.ndarray) -> dict | None:
    """Where a heatmap's evidence lies against a lung mask of the same slice
    (the map is resized to the mask): "in_lungs" (share of its mass inside the
    mask), "lung_share" (the mask's share of the slice: what a map spread
    evenly would score), "ratio" (the two divided: 1 is no focus on the
    lungs) and "peak_in_lungs" (the hottest pixel inside). None when the
    mask is empty or the map has no mass."""
    mask = np.asarray(mask, dtype=bool)
    heat = cv2.resize(np.asarray(heatmap, dtype=np.float32), (mask.shape[1], mask.shape[0]),
                      interpolation=cv2.INTER_LINEAR).clip(0, None)
    mass = float(heat.sum())
    if not mask.any() or mass <= 0:
        return None
    in_lungs = float(heat[mask].sum()) / mass
    lung_share = float(mask.mean())
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return {"in_lungs": in_lungs, "lung_share": lung_share, "ratio": in_lungs / lung_share,
            "peak_in_lungs": bool(mask[peak])}


def evidence_note(focus: dict | None) -> str | None:
    """OUTSIDE_NOTE when most of the map's mass lies outside the lungs, else None."""
    return OUTSIDE_NOTE if focus is not None and focus["in_lungs"] < MOSTLY_OUTSIDE else None


def with_lung_outline(image: np.ndarray, mask: np.ndarray, colour=(255, 255, 255)) -> np.ndarray:
    """`image` (uint8 H x W x 3) with the outline of the lung mask (the same
    size) drawn over it, so a reader sees which evidence falls in the lungs."""
    contours, _ = cv2.findContours(np.asarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    outlined = np.ascontiguousarray(image).copy()
    cv2.drawContours(outlined, contours, -1, colour, max(1, round(min(image.shape[:2]) / 200)))
    return outlined
