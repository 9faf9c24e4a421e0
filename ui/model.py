"""Everything that needs TensorFlow, and so the only ui module that imports
the core modules loading it: a run's model (loaded once, shared by every
session), predictions on uploads, Grad-CAM overlays, and the table of
cross-validated recipes (core.training.cross_validation loads TensorFlow too)."""
from __future__ import annotations

import io

import numpy as np
import streamlit as st
from PIL import Image

from core.inference import heatmaps
from core.inference import site_store
from core.inference.heatmaps import colour_bar, overlay
from core.inference.predict import Prediction, Predictor
from core.inference.scan_decision import ScanResult
from ui.cache_keys import mtime
from ui.dataset_cache import read_image

UPLOAD_TYPES = ["png", "jpg", "jpeg", "bmp", "tif", "tiff", "dcm", "dicom"]
CAM_METHODS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}


@st.cache_resource(max_entries=2, show_spinner="Loading the model…")
def _model(run_path: str, model_stamp: float) -> Predictor:
    return Predictor.from_run(run_path)


@st.cache_resource(max_entries=8, show_spinner=False)
def _predictor(run_path: str, model_stamp: float, site: str | None = None, profile_stamp: float = 0.0) -> Predictor:
    """The run's one loaded model, calibrated for `site` (profile_stamp: its profile's time)."""
    return _model(run_path, model_stamp).for_site(site)


def model_stamp(run: dict) -> float:
    """Changes when the model, its predictions (and so its calibration) or its
    out-of-distribution reference (built when deployed) change."""
    return max(mtime(run["path"] / name) for name in ("model.keras", "predictions.csv", "ood.json"))


def site_stamp(run: dict, site: str | None) -> float:
    """Changes when the site profile is fitted again (0 without a site)."""
    return mtime(site_store.profile_dir(run["path"], site) / site_store.PROFILE_FILE) if site else 0.0


def predictor(run: dict, site: str | None = None) -> Predictor:
    """The run's model, loaded once and shared by every session; with `site`,
    calibrated and decided by that site's profile (core.inference.site_profile)."""
    return _predictor(str(run["path"]), model_stamp(run), site, site_stamp(run, site))


@st.cache_data(max_entries=32, show_spinner=False)  # a Prediction holds the decoded scan
def _predict(run_path: str, model_stamp: float, content: bytes, name: str, site: str | None = None,
             profile_stamp: float = 0.0) -> Prediction:
    model = _predictor(run_path, model_stamp, site, profile_stamp)
    return model.predict_images([read_image(content, name)], [name])[0]


def predict_upload(run: dict, name: str, content: bytes, site: str | None = None) -> Prediction:
    """Probability and decision for one uploaded file (with `site`: by that
    site's profile). A file that is not a readable image raises
    core.data.limits.ImageReadError (a ValueError) whose message starts with its name."""
    return _predict(str(run["path"]), model_stamp(run), content, name, site, site_stamp(run, site))


@st.cache_data(max_entries=512, show_spinner=False)
def _heatmap(run_path: str, model_stamp: float, source: str | bytes, name: str,
             stamp: float, method: str, class_index: int = 1) -> np.ndarray:
    image = read_image(source, name, stamp)
    return _predictor(run_path, model_stamp).gradcam(image, method, class_index)


def gradcam_overlay(run: dict, source: str | bytes, name: str, method: str = "gradcam",
                    opacity: float = 0.4, class_index: int = 1, outline: bool = False) -> np.ndarray:
    """The scan (a path or uploaded bytes) with its Grad-CAM (or Grad-CAM++)
    heatmap of evidence for class_index (1: positive) blended over it. The
    heatmap is cached per run, image, method and class (it is the slow part),
    so changing the opacity costs only the blend."""
    stamp = 0.0 if isinstance(source, bytes) else mtime(source)
    source = source if isinstance(source, bytes) else str(source)
    heatmap = _heatmap(str(run["path"]), model_stamp(run), source, name, stamp, method, class_index)
    image = read_image(source, name, stamp)
    blended = overlay(predictor(run).view(image), heatmap, alpha=opacity)
    return heatmaps.with_lung_outline(blended, predictor(run).lung_fields(image)) if outline else blended


def evidence_note(run: dict, source: str | bytes, name: str, method: str = "gradcam",
                  class_index: int = 1) -> str | None:
    """heatmaps.OUTSIDE_NOTE when most of the (cached) map's evidence lies outside the slice's lung
    fields, else None: said under the map so that it is not read as the place of a lesion."""
    stamp = 0.0 if isinstance(source, bytes) else mtime(source)
    source = source if isinstance(source, bytes) else str(source)
    heatmap = _heatmap(str(run["path"]), model_stamp(run), source, name, stamp, method, class_index)
    lungs = predictor(run).lung_fields(read_image(source, name, stamp))
    return heatmaps.evidence_note(heatmaps.lung_focus(heatmap, lungs))


def lung_outline_toggle() -> bool:
    """Whether to draw the lung fields' outline over the heatmaps, kept for the session."""
    return st.toggle("Outline the lung fields", key="lung_outline", persist_state="session",
                     help="The lung mask the evidence is measured against: a map that is read as the place "
                          "of a lesion should be hot inside it.")


@st.cache_data(max_entries=256, show_spinner=False)
def _slice_heatmap(run_path: str, model_stamp: float, key: str, index: int, method: str, class_index: int,
                   _predictor, _image: np.ndarray) -> np.ndarray:
    return _predictor.gradcam(_image, method, class_index)


def slice_overlay(run: dict, result: ScanResult, key: str, index: int, method: str, opacity: float,
                  class_index: int) -> np.ndarray:
    """Slice `index` (as the model sees it) with its Grad-CAM heatmap of evidence for
    class_index; the heatmap is cached, so moving the opacity costs only the blend."""
    image, model = result.scan.rgb(index), predictor(run)
    heatmap = _slice_heatmap(str(run["path"]), model_stamp(run), key, index, method, class_index,
                             model, image)
    return overlay(model.view(image), heatmap, alpha=opacity)


def heatmap_colour_bar(class_name: str) -> None:
    """The heatmaps' colour scale and what it means. Each map is scaled on its
    own scan (tf-keras-vis normalises it): colours say where the evidence for
    the class is, not how strong it is; the probability says that."""
    st.image(colour_bar(), width=480,
             caption=f"Heatmap colours: blue = no evidence for {class_name}, red = the strongest evidence "
                     f"for {class_name} in this scan. Each map is scaled to its own scan, so red marks where "
                     "the model found the evidence, not how much there was; a map that stays blue found none.")


def png_bytes(image: np.ndarray) -> bytes:
    """An overlay encoded as PNG, for its download button."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
