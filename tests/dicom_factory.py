"""Synthetic CT DICOM files for the tests (pydicom), shared by the data,
bad-input and app tests."""
import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def ct_dataset(hounsfield: np.ndarray | None = None, shape: tuple[int, int] | None = None,
               transfer_syntax=ExplicitVRLittleEndian) -> Dataset:
    """A CT slice stored as HU + 1024 (RescaleIntercept -1024). Without
    `hounsfield` it has no pixel data: `shape` then sets Rows and Columns."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    shape = hounsfield.shape if hounsfield is not None else shape
    if shape is not None:
        ds.Rows, ds.Columns = shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    if hounsfield is not None:
        ds.PixelData = (np.asarray(hounsfield) + 1024).astype(np.int16).tobytes()
    return ds


def dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
