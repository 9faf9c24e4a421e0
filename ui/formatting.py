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


def minutes(seconds) -> str:
    """A duration for people: "under 1 min", "18 min", "2 h 05 min"; "–" when unknown."""
    if seconds is None or isinstance(seconds, str) or not np.isfinite(seconds):
        return "–"
    whole = round(seconds / 60)
    if whole < 1:
        return "under 1 min"
    if whole < 60:
        return f"{whole} min"
    return f"{whole // 60} h {whole % 60:02d} min"
