"""Small synthetic triage outputs for the review tests: DICOM files, saliency maps, a worklist.

Patient names are set on purpose (``DOE^JANE``...) so tests can check they never surface.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medassist.datamodel import WORKLIST_COLUMNS

CT_SOP = "1.2.840.10008.5.1.4.1.1.2"
DX_SOP = "1.2.840.10008.5.1.4.1.1.1.1"
CR_SOP = "1.2.840.10008.5.1.4.1.1.1"
PATIENT_NAMES = ("DOE^JANE", "ROE^RICHARD", "POE^EDGAR", "SMITH^ANNA")


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    modality: str,
    study_uid: str,
    series_uid: str,
    patient_id: str,
    patient_name: str,
    accession: str,
    body_part: str = "HAND",
    window: tuple[float, float] | None = None,
    photometric: str = "MONOCHROME2",
    intercept: float = 0.0,
    instance: int = 1,
    z: float = 0.0,
) -> Path:
    """One uncompressed single-frame DICOM image (uint16 or int16 stored values)."""
    sop = {"CT": CT_SOP, "DX": DX_SOP}.get(modality, CR_SOP)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.BodyPartExamined = body_part
    ds.StudyDate = "20240115"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    signed = pixels.dtype == np.int16
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelSpacing = [0.5, 0.5]
    if modality == "CT":
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, z]
        ds.SliceThickness = 1.0
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = 1.0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _blob(shape: tuple[int, ...], centre: tuple[float, ...], sigma: float) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    d2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return np.exp(-d2 / (2 * sigma**2)).astype(np.float32)


def make_triage_out(root: Path, *, large: int = 0) -> Path:
    """An OUT folder with worklist.json/.csv for four studies and their files; returns OUT.

    1. DX hand radiograph 64 x 80, fracture flagged (score 0.91), 2D saliency map;
    2. CT volume 5 x 48 x 48 in HU, flagged (0.75) on slices 2 3, 3D saliency map;
    3. CR 60 x 50, not flagged (0.12);
    4. a DX whose decoding failed: error row, no model.
    ``large`` > 0 makes study 1 a ``large`` x ``large`` image instead.
    """
    out = root / "out"
    data = root / "input"
    (out / "saliency").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows: list[dict] = []

    def row(**kw) -> dict:
        base = {name: "" for name in WORKLIST_COLUMNS}
        base.update(kw)
        rows.append(base)
        return base

    # 1. DX
    shape = (large, large) if large else (64, 80)
    dx = (rng.normal(1200, 200, shape).clip(0, 4095)).astype(np.uint16)
    dx[shape[0] // 3 : shape[0] // 2, :] += 1500
    st1, se1 = generate_uid(), generate_uid()
    dx_path = write_dicom(data / "p1" / "dx.dcm", dx, modality="DX", study_uid=st1, series_uid=se1,
                          patient_id="PID-001", patient_name=PATIENT_NAMES[0], accession="ACC001",
                          window=(2000.0, 4000.0))
    sal1 = _blob(shape, (shape[0] * 0.4, shape[1] * 0.6), max(shape) / 10)
    np.save(out / "saliency" / f"{se1}.npy", sal1)
    row(study_uid=st1, series_uid=se1, patient_id="PID-001", accession="ACC001", modality="DX",
        body_part="HAND", model="fracture_xray", model_version="1.0.0", finding="fracture", score=0.91,
        threshold=0.5, flagged=True, slices="0", saliency_path=str(out / "saliency" / f"{se1}.npy"),
        source_path=str(dx_path))

    # 2. CT volume, 5 slices in HU (stored + intercept -1024)
    st2, se2 = generate_uid(), generate_uid()
    vol = np.full((5, 48, 48), -1000.0, dtype=np.float32)
    vol[:, 8:40, 8:40] = 40.0
    vol[2:4, 20:28, 20:28] = 700.0
    for i in range(5):
        write_dicom(data / "p2" / "ct" / f"s{i:02d}.dcm", (vol[i] + 1024).astype(np.uint16), modality="CT",
                    study_uid=st2, series_uid=se2, patient_id="PID-002", patient_name=PATIENT_NAMES[1],
                    accession="ACC002", body_part="HEAD", intercept=-1024.0, instance=i + 1, z=float(i),
                    window=(40.0, 80.0))
    sal2 = _blob((5, 48, 48), (2.5, 24, 24), 4)
    np.save(out / "saliency" / f"{se2}.npy", sal2)
    row(study_uid=st2, series_uid=se2, patient_id="PID-002", accession="ACC002", modality="CT",
        body_part="HEAD", model="bleed_ct", model_version="0.3.0", finding="haemorrhage", score=0.75,
        threshold=0.5, flagged=True, slices="2 3", saliency_path=str(out / "saliency" / f"{se2}.npy"),
        source_path=str(data / "p2" / "ct"))

    # 3. CR not flagged (MONOCHROME1, no window)
    st3, se3 = generate_uid(), generate_uid()
    cr = rng.integers(100, 900, (60, 50)).astype(np.uint16)
    cr_path = write_dicom(data / "p3" / "cr.dcm", cr, modality="CR", study_uid=st3, series_uid=se3,
                          patient_id="PID-003", patient_name=PATIENT_NAMES[2], accession="ACC003",
                          body_part="LEG", photometric="MONOCHROME1")
    np.save(out / "saliency" / f"{se3}.npy", _blob((60, 50), (30, 25), 6))
    row(study_uid=st3, series_uid=se3, patient_id="PID-003", accession="ACC003", modality="CR",
        body_part="LEG", model="fracture_xray", model_version="1.0.0", finding="fracture", score=0.12,
        threshold=0.5, flagged=False, slices="0", saliency_path=str(out / "saliency" / f"{se3}.npy"),
        source_path=str(cr_path))

    # 4. error row
    st4, se4 = generate_uid(), generate_uid()
    row(study_uid=st4, series_uid=se4, patient_id="PID-004", accession="ACC004", modality="DX",
        body_part="LEG", source_path=str(data / "p4" / "broken.dcm"),
        error=f"{data / 'p4' / 'broken.dcm'}: pixel data truncated")

    write_worklist(out, rows)
    return out


def write_worklist(out: Path, rows: list[dict]) -> None:
    """worklist.json (typed values) and worklist.csv (text), as triage writes them."""
    records = []
    for r in rows:
        rec = dict(r)
        rec["score"] = r["score"] if r["score"] != "" else None
        rec["threshold"] = r["threshold"] if r["threshold"] != "" else None
        rec["flagged"] = r["flagged"] if r["flagged"] != "" else None
        records.append(rec)
    (out / "worklist.json").write_text(json.dumps(records, indent=1))
    with (out / "worklist.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=WORKLIST_COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("true" if v is True else "false" if v is False else v) for k, v in r.items()})


def write_many(db_path: str, writer: str, n: int) -> None:
    """A separate process's work in the concurrency test (importable by a spawned child)."""
    from medassist.review.store import DecisionStore

    opened = DecisionStore(db_path)
    for i in range(n):
        opened.record_decision(
            study_uid="1.2.3", series_uid=f"1.2.3.{i}", model="fracture_xray", model_version="1.0.0",
            finding="fracture", score=0.91, threshold=0.5, model_flagged=True, decision="accept", reviewer=writer,
        )


PASSWORD = "correct horse battery"  # the reviewer accounts' test password


class Clock:
    """A clock that moves only when told (sign-in backoff tests)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
