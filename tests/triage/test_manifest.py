"""OUT/files.csv (medassist.triage.manifest): every input file once, with what became of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medassist.triage import TriageOptions, run_triage
from medassist.triage.manifest import FILES_COLUMNS, FileEntry, read_manifest, write_manifest
from medassist.triage.run import record_run
from medassist.triage.testing import synthetic_radiograph, write_dicom_image
from medassist.triage.worklist import FILES_NAME

SHARED_DICOM = Path(__file__).resolve().parents[2].parent / "shared/data/dicom"


def _same_series(paths: list[Path], series_uid: str) -> None:
    """Put files into one series (and one study): instances 1..n along z."""
    for number, path in enumerate(paths, start=1):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series_uid, series_uid + ".0"
        ds.InstanceNumber, ds.ImagePositionPatient = number, [0.0, 0.0, float(number)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> dict[str, Path]:
    """One file of each fate: scored, a 3-file series no model covers, a duplicate, junk, an RT plan,
    an RGB secondary capture, a truncated file, an undecodable one and a 4D NIfTI."""
    root = tmp_path_factory.mktemp("export")
    files = {"scored": write_dicom_image(root / "dx" / "IM1.dcm", synthetic_radiograph(96, 80, 1), index=1)}
    chest = [write_dicom_image(root / "chest" / f"IM{i}.dcm", synthetic_radiograph(64, 64, 10 + i),
                               body_part="CHEST", index=10 + i) for i in range(3)]
    _same_series(chest, "1.2.826.0.1.3680043.99.1")
    files.update({f"chest{i}": path for i, path in enumerate(chest)})
    files["duplicate"] = root / "zcopy" / "IM1.dcm"  # after dx/ in path order: the copy is the duplicate
    files["duplicate"].parent.mkdir()
    shutil.copy(files["scored"], files["duplicate"])
    files["junk"] = root / "README.txt"
    files["junk"].write_text("exported by the PACS\n")
    truncated = write_dicom_image(root / "cut" / "IM1.dcm", synthetic_radiograph(96, 80, 3), index=3)
    truncated.write_bytes(truncated.read_bytes()[:-2000])
    files["truncated"] = truncated
    undecodable = write_dicom_image(root / "bad" / "IM1.dcm", synthetic_radiograph(96, 80, 4), index=4)
    ds = pydicom.dcmread(undecodable)
    ds.RescaleSlope, ds.RescaleIntercept = 1e38, 0  # decodes to infinite values
    ds.save_as(undecodable, enforce_file_format=True)
    files["undecodable"] = undecodable
    files["4d"] = root / "fmri.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((4, 4, 3, 5)).astype(np.float32), np.eye(4)),
             str(files["4d"]))
    if SHARED_DICOM.is_dir():
        files["rt plan"] = root / "rtplan.dcm"
        shutil.copy(SHARED_DICOM / "pydicom/rtplan_truncated.dcm", files["rt plan"])
        files["rgb"] = root / "sc_rgb.dcm"
        shutil.copy(SHARED_DICOM / "pydicom-data/SC_rgb.dcm", files["rgb"])
    return files


def _by_path(out: Path) -> dict[str, dict[str, str]]:
    entries = read_manifest(out / FILES_NAME)
    paths = [e["path"] for e in entries]
    assert len(paths) == len(set(paths)), "each file once"
    return {e["path"]: e for e in entries}


def test_every_input_file_is_listed_once_with_what_became_of_it(export, tmp_path, model_dir):
    root = export["scored"].parents[1]
    out = tmp_path / "out"
    run_triage([root], out, TriageOptions(device="cpu", num_workers=0, weights_dir=model_dir, progress=False,
                                          explain="none"))

    entries = _by_path(out)
    header = (out / FILES_NAME).read_text().splitlines()[0]
    rows = json.loads((out / "worklist.json").read_text())
    uid = {r["source_path"]: r["series_uid"] for r in rows}

    assert header == ",".join(FILES_COLUMNS)
    assert set(entries) == {str(p) for p in root.rglob("*") if p.is_file()}
    status = {name: entries[str(path)]["status"] for name, path in export.items()}
    assert status == {
        "scored": "used", "chest0": "not applicable", "chest1": "not applicable", "chest2": "not applicable",
        "duplicate": "duplicate", "junk": "not an image", "truncated": "error", "undecodable": "error",
        "4d": "unsupported", **({"rt plan": "not an image", "rgb": "not applicable"} if "rgb" in export else {}),
    }
    scored = entries[str(export["scored"])]
    assert scored["series_uid"] == uid[str(export["scored"])] and scored["reason"] == ""
    chest = {entries[str(export[f"chest{i}"])]["series_uid"] for i in range(3)}
    assert chest == {"1.2.826.0.1.3680043.99.1"}, "the three files folded into one series"
    assert entries[str(export["chest0"])]["reason"].startswith("no shipped model applies to DX / CHEST")
    duplicate = entries[str(export["duplicate"])]
    assert duplicate["series_uid"] == scored["series_uid"]
    assert duplicate["reason"].startswith("duplicate instance: same SOPInstanceUID as ")
    assert entries[str(export["junk"])]["reason"] == "not a DICOM file"
    assert entries[str(export["truncated"])]["reason"].startswith("pixel data truncated: ")
    assert entries[str(export["undecodable"])]["reason"] == "rescale or Modality LUT gives non-finite pixel values"
    assert entries[str(export["4d"])]["reason"].startswith("4D NIfTI (4 x 4 x 3 x 5) is not supported")
    if "rt plan" in export:
        assert entries[str(export["rt plan"])]["reason"] == "non-image object (RT Plan Storage)"


def test_a_stopped_run_lists_every_file_and_the_resumed_run_completes_the_list(export, tmp_path, model_dir):
    root = export["scored"].parents[1]
    out = tmp_path / "out"
    from medassist.ingest import discover_files
    from medassist.triage.run import prepare_run

    found = discover_files([root])
    _, specs = prepare_run(out, model_dir)

    def produce_nothing(pending):  # stops before scoring anything, as a killed run would
        raise KeyboardInterrupt
        yield

    with pytest.raises(KeyboardInterrupt):
        record_run(found.series, found.problems, out, specs, produce_nothing, progress=False, checkpoint_every=50,
                   skipped=found.skipped)
    stopped = _by_path(out)
    options = TriageOptions(device="cpu", num_workers=0, weights_dir=model_dir, progress=False, explain="none")
    run_triage([root], out, options)
    resumed = _by_path(out)
    reference = tmp_path / "reference"
    run_triage([root], reference, options)

    assert set(stopped) == set(resumed) == {str(p) for p in root.rglob("*") if p.is_file()}
    assert stopped[str(export["scored"])]["status"] == "pending"
    assert stopped[str(export["undecodable"])]["status"] == "pending"
    assert stopped[str(export["chest0"])]["status"] == "not applicable"  # decided before any scoring
    assert resumed == _by_path(reference)
    assert "pending" not in {e["status"] for e in resumed.values()}


def test_cells_that_look_like_formulas_are_written_safely_and_read_back_exactly(tmp_path):
    entries = [FileEntry("=HYPERLINK(\"x\")", "error", "", "-1 looks like a number"),
               FileEntry("/data/a.dcm", "used", "1.2.3", "")]

    write_manifest(tmp_path, entries)

    text = (tmp_path / FILES_NAME).read_bytes().decode()
    assert "'=HYPERLINK" in text and "'-1 looks" in text and text.endswith("\r\n")
    assert read_manifest(tmp_path / FILES_NAME) == [
        {"path": e.path, "status": e.status, "series_uid": e.series_uid, "reason": e.reason} for e in entries]
