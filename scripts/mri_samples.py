"""The brain-MRI part of the bundled "PACS export" (deterministic), built by make_sample_data.py.

Writes, replacing only these two folders:

  samples/export/PAT13/STUDY1/SER1/IM0001 .. IM0007
      a tumour MR series: 7 consecutive axial slices of ONE patient with a glioma from the
      figshare brain tumour set (files 2112-2118, validation split of configs/tumor_mri.yaml),
      wrapped as DICOM MR Image Storage, 8-bit MONOCHROME2, Explicit VR Little Endian, one file
      per slice, with synthetic, de-identified headers and a plausible geometry (0.49 mm pixels,
      6 mm slices 7 mm apart, axial). InstanceNumber runs superior -> inferior while the files'
      positions run the other way, so readers must order slices by position.
  samples/export/PAT14/brain_normal_colin27_2mm.nii.gz
      a normal brain volume with its skull: the Colin27 T1 average (ch2.nii.gz from Debian's
      mricron-data package, /usr/share/mricron/templates), averaged to 2 mm voxels, 8-bit.

Never uses the no_tumor (Br35H) images, whose licence is not verified.
The sources, licences and citations are in NOTICE at the repository root.

scripts/make_sample_data.py calls ``build`` and ``verify`` here, so one command rebuilds (or
checks) the whole export.
"""

from __future__ import annotations

import argparse
import filecmp
import gzip
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("MEDASSIST_DATA", "/work/shared/data"))

MR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_OID, "medassist mri sample data v1")
STUDY_DATE = "20240116"
DEID_METHOD = "Synthetic header; pixels from public figshare JPEG"  # LO: at most 64 chars

TUMOUR_FOLDER = "glioma"
TUMOUR_FILES = tuple(range(2112, 2119))  # one patient, inferior -> superior (checked by eye)
BLOCK_SIZE, N_FOLDS, VAL_FOLD = 100, 5, 1  # configs/tumor_mri.yaml
PIXEL_SPACING = 0.49  # mm, as in the figshare acquisitions (512 x 512)
SLICE_THICKNESS, SLICE_GAP = 6.0, 1.0  # mm
NUMBER, IDENT = 13, "TUMOR13"
SERIES_DIR = f"PAT{NUMBER:02d}/STUDY1/SER1"
NORMAL_REL = "PAT14/brain_normal_colin27_2mm.nii.gz"
COLIN27 = Path(os.environ.get("MEDASSIST_COLIN27", "/usr/share/mricron/templates/ch2.nii.gz"))
COLIN27_SHAPE_2MM = (90, 108, 90)


def uid(*parts: str) -> str:
    """A deterministic UID under the 2.25 root, from a name-based UUID of ``parts``."""
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, '/'.join(parts)).int}"


def is_validation(number: int) -> bool:
    return (number // BLOCK_SIZE) % N_FOLDS == VAL_FOLD


def tumour_slices(data: Path) -> list[np.ndarray]:
    out = []
    for n in TUMOUR_FILES:
        if not is_validation(n):
            raise SystemExit(f"{n} is not in the validation split")
        path = data / "brain_tumor" / TUMOUR_FOLDER / f"{n}.jpg"
        box = path.with_suffix(".txt").read_text().split()
        if not box or box[0] != "2":  # YOLO class 2 = glioma in this set
            raise SystemExit(f"{path}: expected a glioma box, found {box}")
        with Image.open(path) as im:
            if im.size != (512, 512):
                raise SystemExit(f"{path}: expected 512 x 512, got {im.size}")
            out.append(np.asarray(im.convert("L"), dtype=np.uint8).copy())
    return out


def make_mr(pixels: np.ndarray, k: int, n_slices: int) -> Dataset:
    """Slice ``k`` (0 = most inferior) of the series, with a synthetic, de-identified header."""
    number = TUMOUR_FILES[k]
    study_uid, series_uid = uid(IDENT, "study"), uid(IDENT, "series")
    sop_uid = uid(IDENT, str(number), "instance")
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = MR_SOP_CLASS
    fm.MediaStorageSOPInstanceUID = sop_uid
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = uid("implementation")
    fm.ImplementationVersionName = "MEDASSIST_MRI1"

    ds = Dataset()
    ds.file_meta = fm
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SOPClassUID = MR_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = STUDY_DATE
    ds.StudyTime = ds.SeriesTime = "101500"
    ds.ContentTime = ds.AcquisitionTime = f"1016{k:02d}"
    ds.AccessionNumber = f"ACC{IDENT}"
    ds.Modality = "MR"
    ds.Manufacturer = "medassist sample"
    ds.ManufacturerModelName = "make_mri_samples.py"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "MR BRAIN"
    ds.SeriesDescription = f"T1 CE AXIAL figshare {TUMOUR_FILES[0]}-{TUMOUR_FILES[-1]}"
    ds.PatientName = f"SAMPLE^{IDENT}"
    ds.PatientID = f"SAMPLE-TUMOR-{NUMBER:02d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientAge = "052Y"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEID_METHOD
    ds.BodyPartExamined = "BRAIN"
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.ContrastBolusAgent = "GADOLINIUM"
    ds.SliceThickness = f"{SLICE_THICKNESS:g}"
    ds.SpacingBetweenSlices = f"{SLICE_THICKNESS + SLICE_GAP:g}"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = uid(IDENT, "frame")
    ds.PositionReferenceIndicator = ""
    ds.StudyID = IDENT
    ds.SeriesNumber = 3
    ds.InstanceNumber = n_slices - k  # superior slice first, positions ascend the other way
    rows, cols = pixels.shape
    fov_r, fov_c = rows * PIXEL_SPACING, cols * PIXEL_SPACING
    z = -30.0 + k * (SLICE_THICKNESS + SLICE_GAP)
    ds.ImagePositionPatient = [f"{-fov_c / 2:.2f}", f"{-fov_r / 2:.2f}", f"{z:.2f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = f"{z:.2f}"
    ds.PixelSpacing = [f"{PIXEL_SPACING:g}", f"{PIXEL_SPACING:g}"]
    ds.ImageComments = (
        f"Converted from figshare brain tumour set {TUMOUR_FOLDER}/{number}.jpg (Cheng et al., "
        "doi:10.6084/m9.figshare.1512427, CC BY 4.0). Synthetic header, not a real patient; the "
        "geometry is plausible, not the original."
    )
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "01"  # the source is a JPEG
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.WindowCenter = 128
    ds.WindowWidth = 256
    ds.PixelData = pixels.tobytes()
    return ds


def colin27_path() -> Path:
    """Colin27 ``ch2.nii.gz`` from Debian's mricron-data (``apt-get install mricron-data``)."""
    if not COLIN27.is_file():
        raise SystemExit(f"{COLIN27}: missing; install Debian's mricron-data (or set MEDASSIST_COLIN27)")
    return COLIN27


def normal_volume_bytes() -> bytes:
    """Colin27 averaged over 2 x 2 x 2 blocks, 8-bit (99.5th percentile = 255), as deterministic .nii.gz bytes."""
    src = nib.load(str(colin27_path()))
    data = np.asarray(src.dataobj, dtype=np.float32)
    shape = tuple(s - s % 2 for s in data.shape)
    data = data[: shape[0], : shape[1], : shape[2]]
    small = data.reshape(shape[0] // 2, 2, shape[1] // 2, 2, shape[2] // 2, 2).mean(axis=(1, 3, 5))
    top = max(float(np.percentile(small, 99.5)), 1e-6)
    small = np.clip(np.rint(small * (255.0 / top)), 0, 255).astype(np.uint8)
    affine = np.array(src.affine, dtype=np.float64)
    affine[:3, 3] = affine[:3, :3] @ np.array([0.5, 0.5, 0.5]) + affine[:3, 3]  # block centres
    affine[:3, :3] = affine[:3, :3] * 2.0
    img = nib.Nifti1Image(small, affine)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"Colin27 T1 (mricron ch2), 2mm; medassist"
    img.set_qform(affine, code=int(src.header["qform_code"]) or 1)
    img.set_sform(affine, code=int(src.header["sform_code"]) or 1)
    return gzip.compress(img.to_bytes(), compresslevel=9, mtime=0)


def build(data: Path, export: Path) -> list[tuple[str, str]]:
    """Write the two sample folders under ``export``; returns (relative path, what) pairs."""
    made = []
    for rel in (SERIES_DIR.split("/")[0], NORMAL_REL.split("/")[0]):
        if (export / rel).exists():
            shutil.rmtree(export / rel)
    slices = tumour_slices(data)
    for k, pixels in enumerate(slices):
        ds = make_mr(pixels, k, len(slices))
        rel = f"{SERIES_DIR}/IM{ds.InstanceNumber:04d}"
        (export / rel).parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(export / rel, enforce_file_format=True)
        made.append((rel, f"MR slice from figshare {TUMOUR_FOLDER}/{TUMOUR_FILES[k]}.jpg, z={ds.SliceLocation} mm"))
    (export / NORMAL_REL).parent.mkdir(parents=True, exist_ok=True)
    (export / NORMAL_REL).write_bytes(normal_volume_bytes())
    made.append((NORMAL_REL, "normal brain with skull: Colin27 T1 (mricron-data ch2), 2 mm"))
    return made


def verify(export: Path) -> None:
    for k in range(len(TUMOUR_FILES)):
        ds = pydicom.dcmread(export / SERIES_DIR / f"IM{k + 1:04d}")
        assert ds.Modality == "MR" and ds.pixel_array.shape == (512, 512)
    img = nib.load(str(export / NORMAL_REL))
    assert img.shape == COLIN27_SHAPE_2MM, img.shape
    if (export / NORMAL_REL).stat().st_size >= 1 << 20:
        raise SystemExit(f"{NORMAL_REL} is not under 1 MB")
