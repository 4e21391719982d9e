"""Triage of brain MRI with the shipped tumour model: the sample MR series and normal volume.

The demo's claim, checked: the sample glioma series (PAT13) is flagged with its slices and a map
on each of them in the stored geometry; the normal brain from another source (PAT14, Colin27 with
its skull) is not flagged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medassist.models.registry import WEIGHTS_DIR
from medassist.review import logic
from medassist.triage import TriageOptions, run_triage

EXPORT = Path(__file__).resolve().parents[2] / "samples" / "export"
TUMOUR_SERIES = EXPORT / "PAT13"
NORMAL_VOLUME = EXPORT / "PAT14" / "brain_normal_colin27_2mm.nii.gz"

pytestmark = pytest.mark.skipif(not (WEIGHTS_DIR / "tumor_mri.pt").is_file(), reason="tumour weights not shipped")


def _rows(out: Path) -> list[dict]:
    """worklist.json rows, with ``slices`` (space-separated, as in the CSV) as a list of ints."""
    rows = json.loads((out / "worklist.json").read_text())
    for row in rows:
        row["slices"] = [int(s) for s in row["slices"].split()]
    return rows


@pytest.fixture(scope="module")
def mri_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mri")
    run_triage([TUMOUR_SERIES, NORMAL_VOLUME], out, TriageOptions(device="cpu", progress=False, explain="flagged"))
    return out


def test_tumour_series_flagged_normal_volume_not(mri_out):
    rows = {Path(r["source_path"]).name: r for r in _rows(mri_out)}
    tumour, normal = rows["SER1"], rows[NORMAL_VOLUME.name]
    assert tumour["model"] == normal["model"] == "tumor_mri"
    assert tumour["flagged"] is True and tumour["score"] >= tumour["threshold"]
    assert normal["flagged"] is False and normal["score"] < normal["threshold"]
    assert normal["modality"] == "MR", "a NIfTI file is MR unless --modality says otherwise"
    assert tumour["slices"] and all(0 <= s < 7 for s in tumour["slices"])
    assert normal["slices"] == [] and normal["saliency_path"] == ""


def test_flagged_slices_get_maps_in_the_stored_geometry(mri_out):
    row = next(r for r in _rows(mri_out) if r["flagged"])
    maps = np.load(mri_out / row["saliency_path"])
    assert maps.shape == (len(set(row["slices"])), 512, 512)
    assert np.isfinite(maps).all() and maps.min() >= 0 and (maps.reshape(len(maps), -1).max(1) > 0).all()
    assert (mri_out / row["saliency_path"]).with_suffix(".png").is_file()
    full = logic.expand_slice_maps(maps, row["slices"], 7)
    assert full.shape == (7, 512, 512)
    for k, s in enumerate(sorted(set(row["slices"]))):
        np.testing.assert_array_equal(full[s], maps[k])
    assert all(not full[s].any() for s in set(range(7)) - set(row["slices"]))


def test_one_slice_series_is_scored_on_the_same_scale(tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    src = sorted(TUMOUR_SERIES.rglob("IM*"), key=lambda p: pydicom.dcmread(p).ImagePositionPatient[2])[3]
    shutil.copy(src, one / "IM0001")
    out = tmp_path / "out"
    run_triage([one], out, TriageOptions(device="cpu", progress=False, explain="none"))
    (row,) = _rows(out)
    assert row["model"] == "tumor_mri" and row["error"] == "" and 0.0 <= row["score"] <= 1.0
    assert set(row["slices"]) <= {0}


def test_modality_override_keeps_the_tumour_model_off_a_ct_volume(tmp_path):
    out = tmp_path / "out"
    run_triage([NORMAL_VOLUME], out, TriageOptions(device="cpu", progress=False, modality_override="CT"))
    (row,) = _rows(out)
    assert row["modality"] == "CT" and row["finding"] == "not applicable" and row["score"] is None


def _no_brain_volume(kind: str):
    from medassist.datamodel import Geometry, Image

    pixels = {"noise": np.random.default_rng(0).uniform(0, 1000, (24, 64, 64)),
              "blank": np.zeros((24, 64, 64))}[kind].astype(np.float32)
    affine = np.diag([0.0, 0.0, 0.0, 1.0])
    affine[2, 0], affine[1, 1], affine[0, 2] = 5.0, 1.0, 1.0
    return Image(pixels=pixels, display=pixels / max(float(pixels.max()), 1.0),
                 geometry=Geometry(spacing=(5.0, 1.0, 1.0), affine=affine))


def test_a_volume_without_a_brain_is_an_error_row_not_a_score(tmp_path):
    """Issue 16, no silent scores: noise or a blank volume gets an error row naming the file and
    the reason (it used to score 0, unflagged, like a normal brain)."""
    import functools

    from medassist.datamodel import Series
    from medassist.triage import TriageOptions, triage_series

    series = [Series(study_uid=f"1.2.9.{i}", series_uid=f"1.2.9.{i}.1", patient_id="P", accession="A",
                     modality="MR", body_part="BRAIN", source_path=f"/data/{kind}", paths=(f"/data/{kind}",),
                     loader=functools.partial(_no_brain_volume, kind)) for i, kind in enumerate(("noise", "blank"))]
    triage_series(series, [], tmp_path, TriageOptions(device="cpu", num_workers=0, progress=False, explain="none"))
    rows = {Path(r["source_path"]).name: r for r in _rows(tmp_path)}
    for kind in ("noise", "blank"):
        assert rows[kind]["score"] is None and rows[kind]["model"] == "tumor_mri"
        assert rows[kind]["error"].startswith(f"/data/{kind}: no brain found in this volume: ")
    quarantined = (tmp_path / "quarantine.csv").read_text()
    assert "/data/noise" in quarantined and "/data/blank" in quarantined


def test_nifti_volumes_that_are_no_image_are_error_rows_not_scores(tmp_path):
    import gzip

    import nibabel as nib

    from medassist.ingest.fuzz import reason_category

    folder = tmp_path / "in"
    folder.mkdir()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nan = np.full((32, 32, 12), np.nan, dtype=np.float32)
    infinite = np.random.default_rng(0).normal(size=(32, 32, 12)).astype(np.float32)
    infinite[3, 3, 3] = -np.inf
    for name, data in (("zeros.nii.gz", np.zeros((32, 32, 12), np.float32)), ("nan.nii.gz", nan),
                       ("inf.nii", infinite)):
        nib.save(nib.Nifti1Image(data, affine), str(folder / name))
    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 640))
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    (folder / "bomb.nii.gz").write_bytes(gzip.compress(header.binaryblock + bytes(4))
                                         + gzip.compress(bytes(64 * 2**20)) * 8)
    out = tmp_path / "out"

    summary = run_triage([folder], out, TriageOptions(device="cpu", progress=False, explain="none"))

    rows = {Path(r["source_path"]).name: r for r in json.loads((out / "worklist.json").read_text())}
    assert sorted(rows) == ["bomb.nii.gz", "inf.nii", "nan.nii.gz", "zeros.nii.gz"]
    assert summary.n_findings == 0 and summary.n_errors == 4
    assert all(r["score"] is None and reason_category(r["error"].removeprefix(r["source_path"] + ": ")) for r in rows.values()), rows
    assert rows["zeros.nii.gz"]["error"].endswith("NIfTI volume is constant (every voxel 0): no image to score")
    assert rows["nan.nii.gz"]["error"].endswith("NIfTI volume has no finite voxel (all 12288 are NaN or infinite)")
    assert rows["inf.nii"]["error"].endswith("NIfTI volume holds 1 infinite voxel value(s): the data or its scaling "
                                             "is corrupt")
    assert rows["bomb.nii.gz"]["error"].startswith("declared image size 1024 x 1024 x 640 x float32 needs ")
    assert rows["zeros.nii.gz"]["model"] == "tumor_mri"
