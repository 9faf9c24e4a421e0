"""A scan's result as DICOM, to store back into the study it came from
(core.data.pacs.store): one Secondary Capture of the key slice (the scan's
most COVID-like slice counted, ScanResult.most_suspicious) with its Grad-CAM
overlay, the colour bar and the figures burned in, its patient and study
modules copied from the source series, in a new series marked research output.

The probability and decision go in tagged text (ImageComments, "key=value;"
fields, read back by result_fields) rather than a Comprehensive SR: one
object a PACS viewer shows, and no new dependency. Nothing but the result
and the source's own patient and study attributes is written.
"""
from __future__ import annotations

import datetime

import cv2
import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from core.inference.heatmaps import colour_bar, overlay
from core.inference.scan_decision import ScanResult

RESEARCH_LABEL = "RESEARCH USE ONLY - not for diagnosis"
SERIES_DESCRIPTION = f"COVID-CT Explorer: {RESEARCH_LABEL}"  # 56 characters: LO holds 64
SERIES_NUMBER = 9901  # far above a scanner's numbers, so the result sorts last in a viewer
SOFTWARE = "COVID-CT Explorer"
# The patient and study modules (DICOM PS3.3 C.7.1.1, C.7.2.1) copied from the source series.
COPIED = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
          "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
          "StudyDescription", "SpecificCharacterSet")
SIDE = 512  # px: the key slice is shown at this width, whatever its own size


def key_slice_picture(predictor, result: ScanResult, alpha: float = 0.4) -> np.ndarray:
    """The key slice with the Grad-CAM of evidence for the scan's decision, the colour bar
    under it and the figures written in: uint8 RGB. ValueError when no slice was scored."""
    key = result.most_suspicious
    if key is None:
        raise ValueError(f"{result.scan.name}: no slice was scored, so there is no key slice to send")
    image = result.scan.rgb(key)
    class_index = int(result.decision == result.positive_class)
    heatmap = predictor.gradcam(image, "gradcam", class_index)
    shown = overlay(predictor.view(image), heatmap, alpha=alpha)
    shown = cv2.resize(shown, (SIDE, round(SIDE * shown.shape[0] / shown.shape[1])), interpolation=cv2.INTER_AREA)
    bar = colour_bar(SIDE - 40, 14)
    footer = np.zeros((96, SIDE, 3), np.uint8)
    footer[8:22, 20:SIDE - 20] = bar
    probability = result.scan_probability
    lines = [f"Grad-CAM: evidence for {'COVID' if class_index else 'non-COVID'} (blue low, red high)",
             f"Scan P({result.positive_class}) = " + ("n/a" if probability is None else f"{probability:.3f}")
             + f", decision {result.decision} at {result.settings['threshold']:.3f}",
             RESEARCH_LABEL]
    for row, line in enumerate(lines):
        cv2.putText(footer, line, (20, 42 + 22 * row), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return np.ascontiguousarray(np.vstack([shown, footer]))


def result_text(result: ScanResult, run_name: str) -> str:
    """The result as tagged text: the research label, then "key=value" fields separated by "; "."""
    probability = result.scan_probability
    key = result.most_suspicious
    fields = {"probability": "n/a" if probability is None else f"{probability:.4f}",
              "decision": result.decision, "threshold": f"{result.settings['threshold']:.4f}",
              "borderline": "yes" if result.borderline else "no", "aggregation": result.settings["aggregation"],
              "positive_class": result.positive_class, "slices_read": str(len(result.scan.slices)),
              "slices_scored": str(len(result.scored)),
              "key_slice": "" if key is None else result.scan.slice_names[key].removesuffix(".dcm"),
              "model_run": run_name}
    clean = {name: str(text).replace(";", ",").replace("=", "-") for name, text in fields.items()}
    return RESEARCH_LABEL + ". " + "; ".join(f"{name}={text}" for name, text in clean.items())


def result_fields(dataset: pydicom.Dataset) -> dict:
    """The tagged fields of a result's ImageComments back as a dict (strings)."""
    text = str(dataset.get("ImageComments", ""))
    return dict(part.split("=", 1) for part in text.split(". ", 1)[-1].split("; ") if "=" in part)


def result_dataset(picture: np.ndarray, source: pydicom.Dataset, text: str,
                   key_sop_uid: str | None = None) -> pydicom.Dataset:
    """A Secondary Capture of `picture` (uint8 RGB) in the study of `source` (a header of the
    scanned series), in a new series marked research output; `text` in its ImageComments."""
    now = datetime.datetime.now()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # A file data set: written with its preamble and "DICM", as a server hands it back.
    dataset = pydicom.FileDataset("result.dcm", pydicom.Dataset(), file_meta=meta, preamble=b"\0" * 128)
    for keyword in COPIED:
        if keyword in source:
            setattr(dataset, keyword, source.data_element(keyword).value)
    dataset.SOPClassUID, dataset.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    dataset.SeriesInstanceUID = generate_uid()
    dataset.Modality, dataset.ConversionType = "OT", "WSD"  # made on a workstation, not acquired
    dataset.SeriesNumber, dataset.InstanceNumber = SERIES_NUMBER, 1
    dataset.SeriesDescription = SERIES_DESCRIPTION
    dataset.ImageComments = text
    dataset.BurnedInAnnotation = "YES"  # the figures and the label are written in the pixels
    dataset.Manufacturer = dataset.SoftwareVersions = SOFTWARE
    dataset.ContentDate = dataset.SeriesDate = now.strftime("%Y%m%d")
    dataset.ContentTime = dataset.SeriesTime = now.strftime("%H%M%S")
    dataset.ImageType = ["DERIVED", "SECONDARY"]
    if key_sop_uid and "SOPClassUID" in source:
        reference = pydicom.Dataset()
        reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = source.SOPClassUID, key_sop_uid
        dataset.SourceImageSequence = [reference]
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation, dataset.PlanarConfiguration = 3, "RGB", 0
    dataset.Rows, dataset.Columns = picture.shape[:2]
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    dataset.PixelData = np.ascontiguousarray(picture, dtype=np.uint8).tobytes()
    return dataset


def result_for_study(predictor, result: ScanResult, source: pydicom.Dataset, run_name: str) -> pydicom.Dataset:
    """The Secondary Capture to send back for `result`, scanned from the series whose header is `source`."""
    key = result.most_suspicious
    key_uid = None if key is None else result.scan.slice_names[key].removesuffix(".dcm")
    return result_dataset(key_slice_picture(predictor, result), source, result_text(result, run_name), key_uid)
