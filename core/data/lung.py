"""Lung-field cropping: find the lungs in a lung-window CT slice with classical
image processing and crop the slice to them.

COVID-CT's images are figures cut from papers: borders, captions, arrows and
the patient table differ by class and become features a network can learn.
Cropping every slice to its lung fields, the same way in training, evaluation,
prediction and Grad-CAM, takes most of them out of the picture. No trained
model is needed, so the crop works on any source.

The steps, on the grey image (lung window: air black, lung dark grey, soft
tissue and bone bright):
1. Otsu's threshold splits dense tissue from air and lung.
2. The body is the largest dense region that does not touch the image border
   (a white figure frame does), with its holes filled: lungs are holes in it.
3. Lung candidates are the air-filled regions inside the body; the largest
   ones (at most two lungs, plus a tolerance for a lung split in two) that
   each cover at least MIN_REGION_FRACTION of the image are kept, and closed.
4. The crop is their bounding box, widened by `margin` on each side, and
   reaching down to the body's back.
When no lung is found (not a lung-window chest slice, or an odd figure:
too little or too much "lung", or too little contrast with the tissue),
the slice is left whole: a crop that cut the wrong thing would be worse.
"""
from __future__ import annotations

import cv2
import numpy as np

# A region smaller than this fraction of the image is noise, a vessel or bowel gas.
MIN_REGION_FRACTION = 0.005
# Lung fields together cover at least this fraction of the image, or the mask is not trusted.
MIN_LUNG_FRACTION = 0.02
MAX_REGIONS = 3
# ... and at most this fraction: more is the background of an inverted or cropped figure.
MAX_LUNG_FRACTION = 0.7
# Grey levels between the lungs and the tissue around them: in a lung window
# the gap is over 100; noise or a flat picture split by Otsu gives far less.
MIN_CONTRAST = 40
DEFAULT_MARGIN = 0.08  # of the box's size, on each side: keeps the pleura and the lung edge
# Lung masking (a recipe option): the mask is widened by this fraction of the image's shorter side,
# so the pleura and lesions at the lung's edge stay, and all else is set to MASK_FILL (black: air
# in a lung window, what the corners of a CT slice already hold).
MASK_DILATION = 0.03
MASK_FILL = 0


def _grey(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _components(mask: np.ndarray):
    """Connected components of a binary mask: (labels, stats) as cv2 gives them, background dropped."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    return labels, stats[1:], count - 1


def _corner_zones(shape, fraction: float = 0.05) -> np.ndarray:
    """True in the four corner squares of the image (`fraction` of the shorter side)."""
    zones = np.zeros(shape, bool)
    side = max(1, round(min(shape) * fraction))
    for rows in (slice(0, side), slice(-side, None)):
        for columns in (slice(0, side), slice(-side, None)):
            zones[rows, columns] = True
    return zones


def _masks(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lung fields, body) as boolean masks; lungs all False when none is found."""
    grey = cv2.GaussianBlur(_grey(image), (5, 5), 0)
    _, dark = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    # Opening cuts the thin bridges through which a lung can touch the outside air.
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, kernel)
    labels, stats, count = _components(dark)
    # The air around the body reaches the image's corners; the lungs do not,
    # even where a tight figure crop lets them touch an edge.
    outside = set(np.unique(labels[_corner_zones(dark.shape) & (labels > 0)]) - 1)
    body = _largest_component(~np.isin(labels, [i + 1 for i in outside]))
    min_area = MIN_REGION_FRACTION * dark.size
    regions = sorted((i for i in range(count) if i not in outside and stats[i, cv2.CC_STAT_AREA] >= min_area),
                     key=lambda i: stats[i, cv2.CC_STAT_AREA], reverse=True)[:MAX_REGIONS]
    lungs = np.isin(labels, [i + 1 for i in regions])
    tissue = body & ~lungs
    if (not MIN_LUNG_FRACTION * lungs.size <= lungs.sum() <= MAX_LUNG_FRACTION * lungs.size
            or not tissue.any() or grey[tissue].mean() - grey[lungs].mean() < MIN_CONTRAST):
        return np.zeros(lungs.shape, bool), body
    # Closing joins the lung with the small lesions inside it (consolidation is dense, like tissue).
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15))
    return cv2.morphologyEx(lungs.astype(np.uint8), cv2.MORPH_CLOSE, kernel).astype(bool), body


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, stats, count = _components(mask)
    if not count:
        return mask
    return labels == 1 + int(np.argmax(stats[:, cv2.CC_STAT_AREA]))


def lung_mask(image: np.ndarray) -> np.ndarray:
    """Boolean mask of the lung fields of a lung-window CT slice (uint8, grey or
    RGB); all False when none is found."""
    return _masks(image)[0]


def lung_box(image: np.ndarray, margin: float = DEFAULT_MARGIN) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the lung fields widened by `margin`, or
    None when no lung is found. The box reaches down to the body's back:
    dense consolidation at the lung bases (where COVID-19 lesions often sit)
    is tissue to the threshold, and must not be cut off."""
    lungs, body = _masks(image)
    if not lungs.any():
        return None
    rows, columns = np.flatnonzero(lungs.any(axis=1)), np.flatnonzero(lungs.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, columns[0], columns[-1] + 1
    body_rows = np.flatnonzero(body[:, left:right].any(axis=1))
    if len(body_rows):
        bottom = max(bottom, body_rows[-1] + 1)
    pad_y, pad_x = round((bottom - top) * margin), round((right - left) * margin)
    height, width = lungs.shape
    return max(0, top - pad_y), min(height, bottom + pad_y), max(0, left - pad_x), min(width, right + pad_x)


def crop_to_lungs(image: np.ndarray, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """The slice cropped to its lung fields (with a margin); the whole slice
    when no lung is found."""
    box = lung_box(image, margin)
    if box is None:
        return image
    top, bottom, left, right = box
    return image[top:bottom, left:right]


def kept_fields(lungs: np.ndarray, dilation: float = MASK_DILATION) -> np.ndarray:
    """What masking keeps of a lung mask: each lung's convex hull, widened by `dilation`. The hull
    takes back dense consolidation that bites into a lung's edge (at the bases, where COVID-19
    lesions often sit, it is tissue to the threshold, and closing does not fill a bite)."""
    hulls = np.zeros(lungs.shape, np.uint8)
    contours, _ = cv2.findContours(lungs.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    for contour in contours:
        cv2.fillPoly(hulls, [cv2.convexHull(contour)], 1)
    side = max(1, round(min(lungs.shape) * dilation))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * side + 1, 2 * side + 1))
    return cv2.dilate(hulls, kernel).astype(bool)


def mask_outside_lungs(image: np.ndarray, dilation: float = MASK_DILATION) -> np.ndarray:
    """A copy of the slice with everything outside its kept lung fields (kept_fields) set to
    MASK_FILL; the slice itself when no lung is found (as crop_to_lungs: a mask that hid the wrong
    thing would be worse)."""
    lungs = lung_mask(image)
    if not lungs.any():
        return image
    kept = kept_fields(lungs, dilation)
    masked = np.full_like(image, MASK_FILL)
    masked[kept] = image[kept]
    return masked


def lung_view(image: np.ndarray, crop: bool = False, mask: bool = False) -> np.ndarray:
    """The slice as a run's model sees it, before resizing: cropped to its lung fields (crop), then
    blanked outside them (mask). The one function training, evaluation, prediction and Grad-CAM
    all go through (core.data.images.model_input, the image cache, the Predictor)."""
    view = crop_to_lungs(image) if crop else image
    return mask_outside_lungs(view) if mask else view
