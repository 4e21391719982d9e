#!/usr/bin/env python
"""Build the bundled sample "PACS export" in samples/export/ (deterministic, re-runnable).

Reads the read-only development data (default /work/shared/data, or $MEDASSIST_DATA, or --data)
and writes, replacing what was there:

  samples/export/PAT01..PAT08/STUDY1/SER1/IM0001[.dcm]
      8 FracAtlas radiographs (4 fractured, 4 not), all from the validation split, wrapped as
      DICOM DX (Digital X-Ray Image Storage - For Presentation), 8-bit MONOCHROME2, Explicit VR
      Little Endian, with synthetic, de-identified headers; one study with one series each.
  samples/export/PAT09, PAT10
      real CR radiographs (RG2 hip, RG3 tibia), byte-identical copies of public test files.
  samples/export/PAT11
      negative control no fracture model applies to: an ultrasound (US1), byte-identical copy.
  samples/export/PAT12
      deliberately malformed file: a synthetic DX whose pixel data is cut short (an interrupted
      transfer). The header reads; decoding the pixels fails.
  samples/export/PAT13, PAT14
      brain MRI (scripts/mri_samples.py): a tumour MR series (7 slices of one figshare glioma
      patient) and a normal brain NIfTI volume with its skull (Colin27 from Debian's mricron-data).
  samples/export_labels.csv
      series_uid,source_image,label,body_region,view,hardware for the 8 FracAtlas DX images.

Some files have no ".dcm" suffix on purpose, so readers must detect DICOM by content.
The licences and citations of everything copied here are in NOTICE at the repository root.

Usage:
  .venv/bin/python scripts/make_sample_data.py            # (re)write samples/
  .venv/bin/python scripts/make_sample_data.py --check    # rebuild in a temp dir, compare, exit 1 if different
"""

from __future__ import annotations

import argparse
import csv
import filecmp
import hashlib
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageFile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mri_samples  # noqa: E402  (scripts/ is not a package)

ImageFile.LOAD_TRUNCATED_IMAGES = True  # a few FracAtlas JPEGs (ids > 4070) lack their last bytes

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("MEDASSIST_DATA", "/work/shared/data"))

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
MAX_SIDE = 512
# Synthetic UIDs are name-based (SHA-1) UUIDs under the 2.25 root (ISO/IEC 9834-8), so every
# run gives the same ones. Note: pydicom's generate_uid(prefix=None, entropy_srcs=...) ignores
# entropy_srcs and returns a random 2.25 UID, so it cannot be used for this.
UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_OID, "medassist sample data v1")
STUDY_DATE = "20240115"
DEID_METHOD = "Synthetic header; pixels from public FracAtlas JPEG"  # LO: at most 64 chars

REGIONS = ("hand", "leg", "hip", "shoulder")
BODY_PART = {"hand": "HAND", "leg": "LEG", "hip": "HIP", "shoulder": "SHOULDER", "mixed": ""}
# FracAtlas gives only frontal/lateral/oblique, no laterality or beam direction: these DICOM
# ViewPosition terms are a synthetic but plausible choice, like the rest of the header.
VIEW_POSITION = {"frontal": "AP", "lateral": "LL", "oblique": "LLO"}

# The 8 FracAtlas images: (sample number, image id, synthetic sex, synthetic age).
# All from the validation split (int(id) // 100 % 5 == 4), checked below against dataset.csv.
# The order deliberately does not follow the label.
FRACATLAS = (
    (1, "IMG0002424", "M", "034Y"),  # fractured, leg, lateral
    (2, "IMG0000437", "F", "067Y"),  # not fractured, hip, frontal
    (3, "IMG0001954", "F", "012Y"),  # not fractured, hand, lateral
    (4, "IMG0001410", "M", "045Y"),  # fractured, hand, frontal
    (5, "IMG0003424", "M", "058Y"),  # not fractured, shoulder, frontal
    (6, "IMG0000454", "F", "073Y"),  # fractured, mixed (leg + hip), frontal, hardware
    (7, "IMG0003953", "F", "029Y"),  # fractured, hand, oblique
    (8, "IMG0000906", "M", "041Y"),  # not fractured, leg, oblique
)
EXPECTED_LABELS = {1: 1, 2: 0, 3: 0, 4: 1, 5: 0, 6: 1, 7: 1, 8: 0}

# Source of the malformed file (validation split too), and how much of its pixel data survives.
TRUNCATED_SOURCE = (12, "IMG0000400", "O", "050Y")
TRUNCATED_KEEP_FRACTION = 0.4

# Byte-identical copies: (relative source under data/dicom, destination in the export, sha256).
COPIES = (
    ("pylibjpeg-data/RG2_JPLY_fixed.dcm", "PAT09/STUDY1/SER1/IM0001.dcm",
     "f6b6e4244bc46d1245a6d524f40377a807c6ee2acc91a17f34f0d20744bf34aa"),
    ("pydicom-data/RG3_J2KI.dcm", "PAT10/STUDY1/SER1/IM0001",
     "c90c915c0c373eb6d244151f9476b05e50623c303ac20334ca9ce4aab0dddf19"),
    ("pydicom-data/US1_J2KI.dcm", "PAT11/STUDY1/SER1/IM0001.dcm",
     "22340375674ff253196ce8a147acf0458bea3f105ff2c6af81f0eb119729605b"),
)

LABEL_COLUMNS = ("series_uid", "source_image", "label", "body_region", "view", "hardware")


def is_validation(image_id: str) -> bool:
    """FracAtlas validation split: contiguous blocks of 100 ids, every fifth block."""
    return int(image_id[3:]) // 100 % 5 == 4


def uid(*parts: str) -> str:
    """A deterministic UID under the 2.25 root, from a name-based UUID of ``parts``."""
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, '/'.join(parts)).int}"


IMPLEMENTATION_UID = uid("implementation")


def dx_path(number: int) -> str:
    """Odd-numbered samples get no suffix, even ones '.dcm' (readers must sniff the content)."""
    return f"PAT{number:02d}/STUDY1/SER1/IM0001" + ("" if number % 2 else ".dcm")


def read_catalogue(data: Path) -> dict[str, dict]:
    """dataset.csv rows keyed by image id (without '.jpg'), with derived region/view/label."""
    out = {}
    with open(data / "fracatlas" / "dataset.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            regions = [r for r in REGIONS if row[r] == "1"]
            views = [v for v in VIEW_POSITION if row[v] == "1"]
            image_id = row["image_id"].removesuffix(".jpg")
            out[image_id] = {
                "image_id": row["image_id"],
                "region": "mixed" if row["mixed"] == "1" or len(regions) != 1 else regions[0],
                "views": views,
                "label": int(row["fractured"]),
                "hardware": int(row["hardware"]),
                "multiscan": int(row["multiscan"]),
            }
    return out


def load_pixels(data: Path, image_id: str, label: int) -> np.ndarray:
    """The radiograph as 8-bit grey, long side at most MAX_SIDE, from the folder matching its label."""
    folder = "Fractured" if label else "Non_fractured"
    path = data / "fracatlas" / "images" / folder / f"{image_id}.jpg"
    if not path.is_file():
        raise SystemExit(f"{path}: missing (label in dataset.csv and image folder disagree?)")
    return grey_pixels(path)


def grey_pixels(path: Path, max_side: int | None = MAX_SIDE) -> np.ndarray:
    """A JPEG as 8-bit grey, long side at most ``max_side`` (None: the source size)."""
    with Image.open(path) as im:
        im = im.convert("L")  # grey content stored as RGB in most files; ITU-R 601 luma
        w, h = im.size
        if max_side is not None and max(w, h) > max_side:
            s = max_side / max(w, h)
            im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
        return np.asarray(im, dtype=np.uint8).copy()


def make_dx(pixels: np.ndarray, number: int, image_id: str, meta: dict, sex: str, age: str,
            tag: str = "FRAC") -> Dataset:
    """A DX For Presentation dataset with a synthetic, de-identified header."""
    ident = f"{tag}{number:02d}"
    study_uid = uid(ident, image_id, "study")
    series_uid = uid(ident, image_id, "series")
    sop_uid = uid(ident, image_id, "instance")
    time = f"{9 + number // 6:02d}{(number * 10) % 60:02d}00"

    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = DX_SOP_CLASS
    fm.MediaStorageSOPInstanceUID = sop_uid
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = IMPLEMENTATION_UID
    fm.ImplementationVersionName = "MEDASSIST_SMPL1"

    ds = Dataset()
    ds.file_meta = fm
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = DX_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = STUDY_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.AccessionNumber = f"ACC{ident}"
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "medassist sample"
    ds.ManufacturerModelName = "make_sample_data.py"
    ds.ReferringPhysicianName = ""
    region = meta["region"]
    ds.StudyDescription = f"XR {BODY_PART[region]}".strip() if BODY_PART[region] else "XR"
    ds.SeriesDescription = f"FracAtlas {image_id}"
    ds.PatientName = f"SAMPLE^{ident}"
    ds.PatientID = f"SAMPLE-{tag}-{number:02d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = sex
    ds.PatientAge = age
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEID_METHOD
    ds.BodyPartExamined = BODY_PART[region]
    ds.ViewPosition = VIEW_POSITION[meta["views"][0]] if len(meta["views"]) == 1 else ""
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = ident
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.ImageComments = (
        f"Converted from FracAtlas {image_id}.jpg (Abedeen et al., Sci Data 10, 521 (2023), "
        "doi:10.1038/s41597-023-02432-4, CC BY 4.0). Synthetic header, not a real patient; "
        "pixel spacing unknown."
    )
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "01"  # the source is a JPEG
    ds.LossyImageCompressionMethod = "ISO_10918_1"

    rows, cols = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = 128
    ds.WindowWidth = 256
    ds.PresentationLUTShape = "IDENTITY"
    data = pixels.tobytes()
    ds.PixelData = data + (b"\0" if len(data) % 2 else b"")
    return ds


def write_dataset(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(data: Path, out: Path) -> list[tuple[str, str]]:
    """Write export/ and export_labels.csv under ``out``; returns (relative path, what) pairs."""
    catalogue = read_catalogue(data)
    export = out / "export"
    if export.exists():
        shutil.rmtree(export)
    export.mkdir(parents=True)
    made: list[tuple[str, str]] = []
    label_rows = []

    for number, image_id, sex, age in FRACATLAS + (TRUNCATED_SOURCE,):
        meta = catalogue[image_id]
        if not is_validation(image_id):
            raise SystemExit(f"{image_id} is not in the validation split")
        if len(meta["views"]) != 1 or meta["multiscan"]:
            raise SystemExit(f"{image_id}: want single-view, single-scan images")
        pixels = load_pixels(data, image_id, meta["label"])
        truncated = (number, image_id, sex, age) == TRUNCATED_SOURCE
        ds = make_dx(pixels, number, image_id, meta, sex, age, tag="TRUNC" if truncated else "FRAC")
        if truncated:
            ds.SeriesDescription = f"FracAtlas {image_id} (truncated copy)"
            ds.ImageComments = ds.ImageComments + " Deliberately truncated: negative control."
        rel = dx_path(number)
        path = export / rel
        write_dataset(ds, path)
        if truncated:
            raw = path.read_bytes()
            n_pixels = len(ds.PixelData)
            keep = len(raw) - n_pixels + int(n_pixels * TRUNCATED_KEEP_FRACTION)
            path.write_bytes(raw[:keep])
            made.append((rel, f"malformed: DX from FracAtlas {image_id}, pixel data cut to "
                              f"{TRUNCATED_KEEP_FRACTION:.0%}"))
            continue
        if EXPECTED_LABELS[number] != meta["label"]:
            raise SystemExit(f"{image_id}: dataset.csv label {meta['label']} != expected")
        label_rows.append({
            "series_uid": ds.SeriesInstanceUID,
            "source_image": meta["image_id"],
            "label": meta["label"],
            "body_region": meta["region"],
            "view": meta["views"][0],
            "hardware": meta["hardware"],
        })
        made.append((rel, f"DX from FracAtlas {image_id}: label {meta['label']}, "
                          f"{meta['region']}, {meta['views'][0]}"))

    for src_rel, dst_rel, digest in COPIES:
        src = data / "dicom" / src_rel
        if sha256(src) != digest:
            raise SystemExit(f"{src}: unexpected content (sha256 differs)")
        dst = export / dst_rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        made.append((dst_rel, f"copy of {src_rel}"))

    made += mri_samples.build(data, export)

    labels_path = out / "export_labels.csv"
    with open(labels_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LABEL_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(label_rows)
    return made


def verify(out: Path) -> None:
    """Every written file reads back; the 8 DX decode; the malformed one does not."""
    for rel, _ in sorted(_walk(out / "export")):
        if rel.endswith(".nii.gz"):
            continue
        ds = pydicom.dcmread(out / "export" / rel)
        if rel.startswith("PAT12"):
            try:
                ds.pixel_array
            except ValueError:
                continue
            raise SystemExit(f"{rel}: the malformed control decodes")
        if ds.Modality == "DX":
            ds.pixel_array  # the copied CR/US files are large compressed images: skip decoding them
    mri_samples.verify(out / "export")


def _walk(root: Path):
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            yield p.relative_to(root).as_posix(), p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder")
    ap.add_argument("--out", type=Path, default=REPO / "samples", help="where export/ goes")
    ap.add_argument("--check", action="store_true",
                    help="rebuild in a temporary folder and compare with --out; write nothing")
    args = ap.parse_args(argv)

    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            build(args.data, Path(tmp))
            new = {rel for rel, _ in _walk(Path(tmp) / "export")}
            old = {rel for rel, _ in _walk(args.out / "export")} if (args.out / "export").exists() else set()
            bad = sorted(new ^ old)
            bad += sorted(r for r in new & old if not filecmp.cmp(
                Path(tmp) / "export" / r, args.out / "export" / r, shallow=False))
            if not (args.out / "export_labels.csv").exists() or not filecmp.cmp(
                    Path(tmp) / "export_labels.csv", args.out / "export_labels.csv", shallow=False):
                bad.append("export_labels.csv")
        if bad:
            print("sample data differs from a fresh build:", *bad, sep="\n  ")
            return 1
        print("sample data matches a fresh build")
        return 0

    made = build(args.data, args.out)
    verify(args.out)
    total = 0
    for rel, what in made:
        size = (args.out / "export" / rel).stat().st_size
        total += size
        print(f"{size:>9,}  export/{rel}  {what}")
    print(f"{total:>9,}  total in export/ ({len(made)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
