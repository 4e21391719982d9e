"""Helpers for the dicom_out tests: sample paths, a worklist made by the run_triage stand-in, tiny
synthetic axial series."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import conftest_orthanc  # noqa: E402  (tests/conftest_orthanc.py: fake_triage)

REPO = Path(__file__).resolve().parents[2]
EXPORT = REPO / "samples" / "export"


@pytest.fixture(scope="session")
def triaged(tmp_path_factory):
    """A results folder: the stand-in triage run on PAT01 (DX), PAT09 (CR, JPEG) and PAT11 (US)."""
    out = tmp_path_factory.mktemp("triaged")
    inputs = [EXPORT / "PAT01", EXPORT / "PAT09", EXPORT / "PAT11"]
    records = conftest_orthanc.fake_triage(inputs, out)
    return out, records



# modality: (SOP class, body part, signed pixels with a rescale to HU, accession)
_KINDS = {"CT": (pydicom.uid.CTImageStorage, "CHEST", True, "A1"), "MR": (pydicom.uid.MRImageStorage, "BRAIN", False, "A2")}


def _write_axial_series(folder: Path, *, modality: str, n: int, size: int, slice_mm: float, pixel_mm: float,
                        reverse_names: bool = False) -> list[Path]:
    """n axial slices with a frame of reference and positions, one file each, in slice order
    (``reverse_names``: the file names in reverse, so the order must come from the positions)."""
    sop_class, body_part, signed, accession = _KINDS[modality]
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for i in range(n):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName = f"{modality}-TEST", f"TEST^{modality}"
        ds.Modality, ds.BodyPartExamined = modality, body_part
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240101", "120000", accession, "1"
        ds.ReferringPhysicianName, ds.PatientBirthDate, ds.PatientSex = "", "", "O"
        ds.SeriesNumber, ds.InstanceNumber = 1, i + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(i * slice_mm)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [pixel_mm, pixel_mm], slice_mm
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
        ramp = np.arange(size * size).reshape(size, size)
        if signed:
            ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
            ds.PixelData = (ramp.astype(np.int16) * (i + 1)).tobytes()
        else:
            ds.PixelData = (ramp.astype(np.uint16) + i).tobytes()
        path = folder / (f"{modality.lower()}{n - i:02d}.dcm" if reverse_names else f"{modality.lower()}{i}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture()
def write_axial_series():
    """``_write_axial_series`` (modality CT or MR, n, size, slice_mm, pixel_mm, reverse_names)."""
    return _write_axial_series
