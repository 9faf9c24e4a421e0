"""Text for display: metrics, and names that come from uploads (file names,
zip members), which the uploader chose and so must not be read as Markdown."""
from __future__ import annotations

import re

import numpy as np

MARKDOWN_SPECIAL = r"([\\`*_{}\[\]()<>#+!|~-])"


def fmt(value, digits: int = 3) -> str:
    """A metric for display; "–" when unknown (None or NaN)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def plain(text: str) -> str:
    """Text without control characters and with Markdown's special characters
    escaped, so a crafted name cannot inject links or images."""
    return re.sub(MARKDOWN_SPECIAL, r"\\\1", "".join(ch for ch in text if ch.isprintable()))


def upload_name(name: str) -> str:
    """An uploaded file's name as shown and offered back: its last path part,
    made plain, so a crafted name can neither point at a path nor inject
    links or images."""
    base = re.split(r"[\\/]", name)[-1]
    base = "".join(ch for ch in base if ch.isprintable()) or "upload"
    return plain(base)
