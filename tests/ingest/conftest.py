"""Fixtures for the ingest tests: the shared real DICOM files and a writer of small synthetic ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SHARED_DICOM = Path(__file__).resolve().parents[2].parent / "shared/data/dicom"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@pytest.fixture(scope="session")
def dicom_data() -> Path:
    """The read-only real DICOM files in ../shared/data/dicom next to the repository."""
    if not SHARED_DICOM.is_dir():
        pytest.skip(f"shared DICOM data not found at {SHARED_DICOM}")
    return SHARED_DICOM


def write_dicom_file(
    path: Path,
    pixels: np.ndarray,
    *,
    study_uid: str = "1.2.3.4",
    series_uid: str = "1.2.3.4.5",
    sop_uid: str | None = None,
    sop_class: str = MR_IMAGE_STORAGE,
    modality: str = "MR",
    instance: int | None = 1,
    position: tuple[float, float, float] | None = (0.0, 0.0, 0.0),
    orientation: tuple[float, ...] | None = AXIAL,
    pixel_spacing: tuple[float, float] | None = (0.5, 0.75),
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    preamble: bool = True,
    **attributes: Any,
) -> Path:
    """Write a small single-frame uint16 DICOM image; ``attributes`` set any other keywords."""
    pixels = np.asarray(pixels, dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientID = "TEST-PATIENT"
    if instance is not None:
        ds.InstanceNumber = instance
    if position is not None:
        ds.ImagePositionPatient = list(position)
    if orientation is not None:
        ds.ImageOrientationPatient = list(orientation)
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0.0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=preamble)
    return path


@pytest.fixture
def write_dicom() -> Callable[..., Path]:
    """The synthetic DICOM writer (see write_dicom_file)."""
    return write_dicom_file
