"""Synthetic CT DICOM files for the tests (pydicom), shared by the data,
bad-input and app tests."""
import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid


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


def item(**elements) -> Dataset:
    """A data set (a sequence item) holding `elements` by keyword."""
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def enhanced_ct_dataset(hounsfield: np.ndarray, positions, kernel="B70f", thickness=1.0) -> Dataset:
    """An enhanced (multi-frame) CT of `hounsfield` (frames x rows x columns)
    stored as HU + 1024. As scanners write it: frame k's ImagePositionPatient
    (0, 0, positions[k]) in its per-frame functional groups; orientation,
    pixel measures, rescale and kernel in the shared ones, none at the top level."""
    frames, rows, columns = hounsfield.shape
    ds = ct_dataset()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SharedFunctionalGroupsSequence = [item(
        PlaneOrientationSequence=[item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])],
        PixelMeasuresSequence=[item(PixelSpacing=[0.7, 0.7], SliceThickness=thickness)],
        PixelValueTransformationSequence=[item(RescaleSlope=1, RescaleIntercept=-1024, RescaleType="HU")],
        CTReconstructionSequence=[item(ConvolutionKernel=kernel)])]
    ds.PerFrameFunctionalGroupsSequence = [item(PlanePositionSequence=[item(ImagePositionPatient=[0, 0, z])])
                                           for z in positions]
    ds.PixelData = (np.asarray(hounsfield) + 1024).astype(np.int16).tobytes()
    return ds
