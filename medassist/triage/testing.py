"""Throwaway models and synthetic DICOM radiographs, for triage tests and the triage benchmark.

Nothing here is used by a real run: a model written by ``write_throwaway_model`` has random
weights and its scores mean nothing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from medassist.keys import load_site_key
from medassist.models.integrity import sign_model
from medassist.models.networks import build_network
from medassist.models.spec import ModelSpec, PreprocessSpec

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
US_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage
FRACTURE_EXCLUDED_BODY_PARTS = ("CHEST", "ABDOMEN", "HEAD", "SKULL", "BRAIN", "BREAST", "PELVIS_ABDOMEN")


def write_throwaway_model(
    weights_dir: Path,
    *,
    name: str = "fracture_xray",
    version: str = "0.0.1-test",
    input_size: int = 64,
    widen_factor: float = 0.25,
    threshold: float = 0.5,
    seed: int = 0,
    modalities: tuple[str, ...] = ("DX", "CR", "RG"),
    excluded_body_parts: tuple[str, ...] = FRACTURE_EXCLUDED_BODY_PARTS,
    sign: bool = True,
) -> ModelSpec:
    """A randomly initialised ``localising_resnet`` with the fracture model's scope (or the given
    ``modalities`` and ``excluded_body_parts``), spec + sha256, signed with the site key unless
    ``sign`` is False (the tests point MEDASSIST_KEY_FILE at a key of their own)."""
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    args = {"layers": [2, 2, 2, 2], "widen_factor": widen_factor}
    weights = weights_dir / f"{name}.pt"
    torch.save(build_network("localising_resnet", args).state_dict(), weights)
    spec = ModelSpec(
        name=name,
        version=version,
        finding="fracture",
        labels=("no_fracture", "fracture"),
        threshold=threshold,
        weights=weights.name,
        sha256=hashlib.sha256(weights.read_bytes()).hexdigest(),
        network="localising_resnet",
        network_args=args,
        preprocess=PreprocessSpec(input_size=input_size),
        modalities=modalities,
        excluded_body_parts=excluded_body_parts,
        training_data="none (random weights, for tests)",
    )
    (weights_dir / f"{name}.json").write_text(spec.to_json())
    if sign:
        sign_model(weights_dir / f"{name}.json", load_site_key())
    return spec


def new_file_dataset(sop_class: str):
    """An empty pydicom Dataset of ``sop_class`` with its file meta (Explicit VR Little Endian) and
    a fresh SOP Instance UID, ready for the image's attributes and ``save_as``."""
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    return ds


def write_dicom_image(
    path: Path,
    pixels: np.ndarray,
    *,
    modality: str = "DX",
    body_part: str = "HAND",
    patient_id: str = "TEST-0001",
    index: int = 1,
    identifiers: bool = True,
) -> Path:
    """Write an 8-bit MONOCHROME2 single-frame DICOM file (uncompressed) with fresh UIDs.

    Patient birth date and sex, study date, time and ID and the referring physician are never
    written (type 2 attributes real exports often leave out); ``identifiers=False`` leaves out
    patient name, patient ID and accession number too.
    """
    from pydicom.uid import generate_uid

    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    ds = new_file_dataset(US_SOP_CLASS if modality == "US" else DX_SOP_CLASS)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    if identifiers:
        ds.PatientName = f"TEST^{index:04d}"
        ds.PatientID = patient_id
        ds.AccessionNumber = f"ACC{index:04d}"
    ds.Modality = modality
    ds.BodyPartExamined = body_part
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def synthetic_radiograph(rows: int, cols: int, seed: int) -> np.ndarray:
    """A smooth bright 'bone' band on a dark background with noise: plausible 8-bit pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    distance = np.abs((xx - cols / 2) * np.cos(angle) + (yy - rows / 2) * np.sin(angle))
    bone = np.exp(-((distance / (0.12 * min(rows, cols))) ** 2))
    image = 40 + 170 * bone + rng.normal(0, 8, size=(rows, cols))
    return np.clip(image, 0, 255).astype(np.uint8)
