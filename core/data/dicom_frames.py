"""Multi-frame (enhanced) DICOM: one file holding a whole series, one frame per slice.

What a single-slice file keeps at the top level (ImagePositionPatient,
ImageOrientationPatient, RescaleSlope, ConvolutionKernel, SliceThickness) an
enhanced CT keeps in functional groups: one item per frame
(PerFrameFunctionalGroupsSequence) or one shared by all frames
(SharedFunctionalGroupsSequence), each holding macros (sequences of one
item). This module reads those headers only; core.images decodes one frame
at a time and core.scan orders the frames as it orders the files of a series.
"""
from __future__ import annotations

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut


def frame_count(dataset: pydicom.Dataset) -> int:
    """NumberOfFrames, 1 when absent (ValueError when it is not a number)."""
    return int(dataset.get("NumberOfFrames") or 1)


def functional_value(dataset: pydicom.Dataset, keyword: str, frame: int | None = None):
    """`keyword`'s value: at the top level, else in `frame`'s own functional
    groups, else in the shared ones; None when it is nowhere."""
    if keyword in dataset:
        return dataset.get(keyword)
    for group in _groups(dataset, frame):
        for element in group:
            if element.VR == "SQ" and len(element.value) and keyword in element.value[0]:
                return element.value[0].get(keyword)
    return None


def _groups(dataset: pydicom.Dataset, frame: int | None) -> list[pydicom.Dataset]:
    """The functional groups that apply to `frame`, its own first."""
    groups = []
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
    if frame is not None and frame < len(per_frame):
        groups.append(per_frame[frame])
    shared = dataset.get("SharedFunctionalGroupsSequence") or []
    if len(shared):
        groups.append(shared[0])
    return groups


def modality_values(pixels: np.ndarray, dataset: pydicom.Dataset, frame: int | None = None) -> np.ndarray:
    """Stored values -> modality values (Hounsfield units for CT): the top-level
    Modality LUT or rescale as pydicom applies it, else the rescale of the
    frame's functional groups (pydicom 3.0 does not look there)."""
    if "ModalityLUTSequence" in dataset or "RescaleSlope" in dataset:
        return apply_modality_lut(pixels, dataset)
    slope = functional_value(dataset, "RescaleSlope", frame)
    intercept = functional_value(dataset, "RescaleIntercept", frame)
    if slope is None or intercept is None:
        return pixels
    return pixels.astype(np.float64) * float(slope) + float(intercept)


def frame_headers(dataset: pydicom.Dataset) -> list[pydicom.Dataset]:
    """One small header per frame, with the elements core.scan orders single-slice
    files by: ImagePositionPatient and ImageOrientationPatient where the
    functional groups give them, and InstanceNumber = the frame's number."""
    headers = []
    for frame in range(frame_count(dataset)):
        header = pydicom.Dataset()
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient"):
            value = functional_value(dataset, keyword, frame)
            if value is not None:
                setattr(header, keyword, value)
        header.InstanceNumber = frame + 1
        headers.append(header)
    return headers
