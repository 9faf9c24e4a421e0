"""The dataset as the pages read it, cached: its index, image sizes, the
duplicate audit, decoded images and thumbnails. Each is keyed by the
dataset's stamp or the file's mtime (ui.cache_keys)."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from core.base import paths
from core.data import audit, datasets, images
from core.training import presets
from ui.cache_keys import dataset_stamp


@st.cache_data(show_spinner="Indexing the dataset…")
def _index(root: str, stamp: float) -> pd.DataFrame:
    return datasets.index_dataset(root)


def load_index(root=None) -> pd.DataFrame:
    """core.data.datasets.index_dataset, cached; raises ValueError for a missing or malformed dataset."""
    root = root or paths.data_dir()
    root = os.pathsep.join(map(str, root)) if isinstance(root, (list, tuple)) else str(root)
    return _index(root, dataset_stamp(root))


def training_images(root=None) -> int:
    """The training split's size, which training time estimates scale with
    (core.training.presets.estimate); the reference run's when the dataset cannot be read."""
    try:
        return int((load_index(root)["split"] == "train").sum())
    except ValueError:
        return presets.REFERENCE_TRAIN_IMAGES


def index_or_stop() -> pd.DataFrame:
    """The dataset index, or an error on the page (and the page stops there)."""
    try:
        return load_index()
    except ValueError as error:
        dataset_error(error)
        st.stop()


def dataset_error(error: ValueError) -> None:
    """Why the dataset cannot be read, and where to point the app instead."""
    st.error(f"The dataset cannot be read: {error}. Set $COVIDCT_DATA to the COVID-CT folder.")


@st.cache_data(show_spinner="Reading image sizes…")
def _sizes(root: str, stamp: float) -> pd.DataFrame:
    index = _index(root, stamp)
    return pd.concat([index, images.image_sizes(index["path"])], axis=1)


def image_sizes(root=None) -> pd.DataFrame:
    """The index with width and height columns (read from the file headers)."""
    root = str(root or paths.data_dir())
    return _sizes(root, dataset_stamp(root))


@st.cache_data(show_spinner="Hashing every image (exact and perceptual hashes)…")
def _audit(root: str, stamp: float) -> pd.DataFrame:
    return audit.audit_duplicates(_index(root, stamp))


def duplicate_audit(root=None) -> pd.DataFrame:
    """core.data.audit.audit_duplicates of the dataset, cached for every session."""
    root = str(root or paths.data_dir())
    return _audit(root, dataset_stamp(root))


@st.cache_data(max_entries=32, show_spinner=False)  # few entries: decoded scans are large
def read_image(source: str | bytes, name: str, stamp: float = 0.0) -> np.ndarray:
    """core.data.images.load_image of a path or of uploaded bytes (stamp: the file's
    mtime, so an edited file is read again). Raises ImageReadError."""
    return images.load_image(source, name=name)


@st.cache_data(max_entries=512, show_spinner=False)
def thumbnail(path: str, size: int = 220) -> np.ndarray:
    """A scan shrunk to fit size x size, keeping its aspect ratio."""
    image = Image.fromarray(images.load_image(path))
    image.thumbnail((size, size))
    return np.asarray(image)
