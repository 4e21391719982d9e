"""The bundled sample export (samples/), its labels and NOTICE are present and consistent.

Quick: only the 8 small DX files are decoded; the copied CR/US files are checked by hash.
"""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
EXPORT = SAMPLES / "export"
LABELS = SAMPLES / "export_labels.csv"
NOTICE = REPO / "NOTICE"
DATA = Path(os.environ.get("MEDASSIST_DATA", "/work/shared/data"))

DX_FILES = [
    "PAT01/STUDY1/SER1/IM0001",
    "PAT02/STUDY1/SER1/IM0001.dcm",
    "PAT03/STUDY1/SER1/IM0001",
    "PAT04/STUDY1/SER1/IM0001.dcm",
    "PAT05/STUDY1/SER1/IM0001",
    "PAT06/STUDY1/SER1/IM0001.dcm",
    "PAT07/STUDY1/SER1/IM0001",
    "PAT08/STUDY1/SER1/IM0001.dcm",
]
MALFORMED = "PAT12/STUDY1/SER1/IM0001.dcm"
COPIES = {  # byte-identical third-party files: path -> (source name, sha256)
    "PAT09/STUDY1/SER1/IM0001.dcm": (
        "RG2_JPLY_fixed.dcm", "f6b6e4244bc46d1245a6d524f40377a807c6ee2acc91a17f34f0d20744bf34aa"),
    "PAT10/STUDY1/SER1/IM0001": (
        "RG3_J2KI.dcm", "c90c915c0c373eb6d244151f9476b05e50623c303ac20334ca9ce4aab0dddf19"),
    "PAT11/STUDY1/SER1/IM0001.dcm": (
        "US1_J2KI.dcm", "22340375674ff253196ce8a147acf0458bea3f105ff2c6af81f0eb119729605b"),
}
MR_FILES = [f"PAT13/STUDY1/SER1/IM{k:04d}" for k in range(1, 8)]
NORMAL_VOLUME = "PAT14/brain_normal_colin27_2mm.nii.gz"
DICOM_FILES = set(DX_FILES) | {MALFORMED} | set(COPIES) | set(MR_FILES)
ALL_FILES = DICOM_FILES | {NORMAL_VOLUME}
COLIN27 = Path("/usr/share/mricron/templates/ch2.nii.gz")


def walk(root: Path) -> set[str]:
    return {
        (Path(d) / f).relative_to(root).as_posix() for d, _, files in os.walk(root) for f in files
    }


def read_labels() -> list[dict]:
    with open(LABELS, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def dx():
    return {rel: pydicom.dcmread(EXPORT / rel) for rel in DX_FILES}


def test_export_exists_and_walk_finds_every_file():
    assert EXPORT.is_dir()
    assert walk(EXPORT) == ALL_FILES
    assert any("." not in Path(p).name for p in ALL_FILES), "some files must lack a suffix"
    total = sum((EXPORT / p).stat().st_size for p in ALL_FILES)
    assert total < 6 * 1024 * 1024


def test_every_file_is_dicom_by_content():
    for rel in DICOM_FILES:
        with open(EXPORT / rel, "rb") as fh:
            assert fh.read(132)[128:] == b"DICM", rel


def test_dx_files_read_and_decode(dx):
    for rel, ds in dx.items():
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1", rel  # DX For Presentation
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.Modality == "DX"
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert "PixelSpacing" not in ds and "ImagerPixelSpacing" not in ds
        a = ds.pixel_array
        assert a.dtype.name == "uint8" and a.shape == (ds.Rows, ds.Columns)
        assert max(a.shape) <= 512 and a.std() > 5


def test_dx_headers_are_synthetic(dx):
    for i, (rel, ds) in enumerate(sorted(dx.items()), start=1):
        assert str(ds.PatientName) == f"SAMPLE^FRAC{i:02d}", rel
        assert ds.PatientID == f"SAMPLE-FRAC-{i:02d}"
        assert ds.AccessionNumber == f"ACCFRAC{i:02d}"
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethod
        assert ds.Manufacturer == "medassist sample"
        assert ds.get("PatientBirthDate", "") == ""
        assert ds.PatientSex in {"M", "F", "O"} and ds.PatientAge.endswith("Y")
        assert ds.BodyPartExamined in {"HAND", "LEG", "HIP", "SHOULDER", ""}
        for kw in ("InstitutionName", "ReferringPhysicianName", "OperatorsName", "OtherPatientIDs"):
            assert not ds.get(kw), (rel, kw)
    uids = [ds[k].value for ds in dx.values() for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                                         "SOPInstanceUID")]
    assert len(set(uids)) == len(uids), "each DX is its own study and series"


def test_labels_match_files(dx):
    rows = read_labels()
    assert list(rows[0]) == ["series_uid", "source_image", "label", "body_region", "view", "hardware"]
    by_series = {r["series_uid"]: r for r in rows}
    assert set(by_series) == {ds.SeriesInstanceUID for ds in dx.values()}
    assert sorted(int(r["label"]) for r in rows) == [0, 0, 0, 0, 1, 1, 1, 1]
    views = {"frontal": "AP", "lateral": "LL", "oblique": "LLO"}
    for ds in dx.values():
        row = by_series[ds.SeriesInstanceUID]
        image_id = row["source_image"].removesuffix(".jpg")
        assert ds.SeriesDescription == f"FracAtlas {image_id}"
        assert int(image_id[3:]) // 100 % 5 == 4, "samples come from the validation split only"
        assert ds.BodyPartExamined == ("" if row["body_region"] == "mixed"
                                       else row["body_region"].upper())
        assert ds.ViewPosition == views[row["view"]]
        assert row["hardware"] in {"0", "1"}


def test_copies_are_byte_identical():
    for rel, (_, digest) in COPIES.items():
        assert hashlib.sha256((EXPORT / rel).read_bytes()).hexdigest() == digest, rel


def test_negative_controls():
    us = pydicom.dcmread(EXPORT / "PAT11/STUDY1/SER1/IM0001.dcm", stop_before_pixels=True)
    assert us.Modality == "US"
    bad = pydicom.dcmread(EXPORT / MALFORMED)  # the header reads...
    assert bad.Modality == "DX" and str(bad.PatientName).startswith("SAMPLE^")
    assert bad.SeriesInstanceUID not in {r["series_uid"] for r in read_labels()}
    with pytest.raises(ValueError, match="less than expected"):  # ...the pixels do not
        bad.pixel_array


def test_notice_names_every_source():
    text = NOTICE.read_text()
    for needle in ("FracAtlas", "CC BY 4.0", "10.1038/s41597-023-02432-4", "Abedeen",
                   "pydicom-data", "pylibjpeg-data", "MIT", "Br35H", "Brain MRI samples",
                   "10.6084/m9.figshare.1512427", "glioma/2112.jpg", "Colin27", "mricron-data",
                   "BSD-3-clause", "Copyright 2006-2010, Chris Rorden",
                   "Redistributions in binary form must reproduce the above copyright notice"):
        assert needle in text, needle
    for name, _ in COPIES.values():
        assert name in text, name
    for row in read_labels():
        assert row["source_image"].removesuffix(".jpg") in text


def test_mr_series_is_one_synthetic_series_ordered_by_position():
    sets = [pydicom.dcmread(EXPORT / rel) for rel in MR_FILES]
    assert {ds.SeriesInstanceUID for ds in sets} == {sets[0].SeriesInstanceUID}
    assert all(ds.Modality == "MR" and ds.PatientIdentityRemoved == "YES" for ds in sets)
    assert all(ds.PatientName.family_name == "SAMPLE" for ds in sets)
    by_instance = sorted(sets, key=lambda ds: int(ds.InstanceNumber))
    z = [float(ds.ImagePositionPatient[2]) for ds in by_instance]
    assert z == sorted(z, reverse=True), "instance numbers run against the positions on purpose"
    assert sets[0].pixel_array.shape == (512, 512)


def test_normal_volume_is_a_small_2mm_nifti():
    import nibabel as nib

    img = nib.load(str(EXPORT / NORMAL_VOLUME))
    assert img.shape == (90, 108, 90)
    assert abs(abs(float(img.affine[0, 0])) - 2.0) < 1e-6
    assert img.get_data_dtype() == "uint8"
    assert (EXPORT / NORMAL_VOLUME).stat().st_size < 1 << 20


@pytest.mark.skipif(not (DATA / "fracatlas" / "dataset.csv").is_file() or not COLIN27.is_file(),
                    reason="shared development data or Debian's mricron-data not available")
def test_script_rebuilds_the_same_bytes():
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_sample_data.py"), "--check",
         "--data", str(DATA)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(not (DATA / "fracatlas" / "dataset.csv").is_file(),
                    reason="shared development data not available")
def test_labels_agree_with_fracatlas_catalogue():
    with open(DATA / "fracatlas" / "dataset.csv", newline="") as fh:
        catalogue = {r["image_id"]: r for r in csv.DictReader(fh)}
    for row in read_labels():
        src = catalogue[row["source_image"]]
        assert row["label"] == src["fractured"], row["source_image"]
        assert row["hardware"] == src["hardware"]
        assert src[row["view"]] == "1"
        assert src[row["body_region"]] == "1"
