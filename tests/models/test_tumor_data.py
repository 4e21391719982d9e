"""Readers of the tumour model's other sources (lgg_mri, ixi_t1, brats2015_examples) and their splits."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medassist.models import tumor_data as td
from medassist.models.splits import HASH_SPLIT, hash_split
from medassist.models.tumor_volumes import load_nifti
from medassist.preprocess import volume as vol

DATA = Path(os.environ.get("MEDASSIST_DATA", "/work/shared/data"))
CFG = {name: {"root": str(DATA / folder)} for name, folder in
       (("lgg", "lgg_mri"), ("ixi", "ixi_t1"), ("brats", "brats2015_examples"))}


# --- the split rule ---------------------------------------------------------------------------------


def test_hash_split_is_deterministic_order_free_and_stratified():
    ids = [f"P{i:03d}" for i in range(100)]
    strata = {k: ("A" if i < 60 else "B" if i < 95 else "C") for i, k in enumerate(ids)}
    split = hash_split(ids, val_percent=20, salt="s", strata=strata)
    assert split == hash_split(list(reversed(ids)), val_percent=20, salt="s", strata=strata)
    val = [k for k in ids if split[k] == "val"]
    assert [strata[k] for k in val].count("A") == 12 and [strata[k] for k in val].count("B") == 7
    assert [strata[k] for k in val].count("C") == 1  # a small stratum still gets one
    assert hash_split(ids, val_percent=20, salt="other", strata=strata) != split  # the salt reshuffles
    assert set(hash_split(ids, val_percent=0, salt="s").values()) == {"train"}


def test_source_config_defaults_and_overrides():
    cfg = td.source_config({"lgg": {"val_percent": 30}}, "lgg")
    assert cfg == {"root": td.DEFAULT_ROOTS["lgg"], "val_percent": 30, "salt": HASH_SPLIT["salt"]}
    assert td.source_config(None, "ixi")["val_percent"] == HASH_SPLIT["val_percent"]


# --- lgg: a tiny tree like the real one (conftest.write_lgg_tree) ---------------------------------


def test_read_lgg_groups_slices_by_patient_in_order(tmp_path, write_lgg_tree):
    write_lgg_tree(tmp_path, {"TCGA_AA_0001": ("AA", 4, [2, 3]), "TCGA_BB_0002": ("BB", 3, [])})
    slices = td.read_lgg(tmp_path)
    patients = td.lgg_patients(slices)
    assert list(patients) == ["TCGA_AA_0001", "TCGA_BB_0002"]
    first = patients["TCGA_AA_0001"]
    assert [s.slice for s in first] == [1, 2, 3, 4] and [s.tumour for s in first] == [0, 1, 1, 0]
    assert first[1].image.name == "002_t1c.jpg" and first[1].mask.name == "002_mask.png"
    assert first[0].institution == "AA" and all(s.image.is_file() and s.mask.is_file() for s in slices)
    stack = td.lgg_stack(first)
    assert stack.shape == (4, 32, 32) and stack.dtype == np.uint8
    assert td.lgg_stack(first, "mask")[1].max() == 255 and td.lgg_stack(first, "mask")[0].max() == 0


def test_lgg_spacing_is_estimated_from_the_slice_count_unless_given():
    assert td.lgg_spacing_mm(20) == pytest.approx(td.LGG_COVERAGE_MM / 20)
    assert td.lgg_spacing_mm(88, 3.0) == 3.0


def test_axial_nifti_reads_back_through_ingest_as_stored(tmp_path):
    """The stack written as NIfTI, read by ingest and reoriented, shows slice k exactly as stored
    (anterior up, patient right on the left), inferior first, with the given spacing."""
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 255, (5, 12, 10)).astype(np.uint8)
    image = load_nifti(td.write_axial_nifti(stack, tmp_path / "s.nii.gz", slice_spacing_mm=6.0, pixel_mm=0.9))
    canonical, axes = vol.reorient_canonical(image, "pixels")
    assert axes.known and axes.spacing == pytest.approx((6.0, 0.9, 0.9))
    assert vol.acquisition_plane(axes) == 0
    np.testing.assert_array_equal(np.asarray(canonical), stack.astype(np.float32))
    assert [axes.source_slice_index(0, k) for k in range(5)] == [0, 1, 2, 3, 4]


# --- ixi and brats: tiny files --------------------------------------------------------------------


def _ixi_like(path: Path, n: int = 24) -> np.ndarray:
    """A 2 mm head stored sagittally like IXI (voxel axes P, S, R in nibabel's terms); returns
    the canonical (S, P, L) array it should read back as."""
    s, p, l = np.mgrid[0:n, 0:n, 0:n]
    canonical = np.where(((s - n / 2) ** 2 + (p - n / 2) ** 2 + (l - n / 2) ** 2) < (0.4 * n) ** 2, 100.0, 0.0)
    canonical[n // 2, 2, 3] = 250  # marks anterior (low P) and patient right (low L)
    data = np.transpose(canonical, (1, 0, 2))[:, :, ::-1]  # voxel (i, j, k) = (P, S, R) indices
    affine = np.array([[0, 0, 2.0, 0], [-2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 1]])  # RAS: i -> P, j -> S, k -> R
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))
    return canonical


def test_read_ixi_and_axial_slices(tmp_path):
    canonical = _ixi_like(tmp_path / "IXI001-HH-0001_T1.nii.gz")
    (tmp_path / "subjects.csv").write_text("subject,age,sex\nIXI001-HH-0001,33.5,F\nIXI999-HH-9999,40,M\n")
    subjects = td.read_ixi(tmp_path)
    assert subjects == [td.IxiSubject("IXI001-HH-0001", tmp_path / "IXI001-HH-0001_T1.nii.gz", 33.5, "F")]
    every = dict(td.axial_slices(subjects[0].path, source="pixels", in_brain_only=False))
    assert sorted(every) == list(range(24))
    np.testing.assert_array_equal(every[12], canonical[12].astype(np.float32))  # the marker where it belongs
    inside = dict(td.axial_slices(subjects[0].path))
    assert 0 < len(inside) < 24 and 0 not in inside and 12 in inside
    assert td.ixi_split(subjects) == {"IXI001-HH-0001": "train"}  # round(20% of 1) = 0


def test_read_brats_lists_complete_cases_only(tmp_path):
    for case, files in (("pat1", ("T1c_subtrMeanDivStd", "OTMultiClass", "brainmask")), ("pat2", ("OTMultiClass",))):
        (tmp_path / case).mkdir()
        for name in files:
            empty = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
            nib.save(empty, str(tmp_path / case / f"{name}.nii.gz"))
    cases = td.read_brats(tmp_path)
    assert [c.case for c in cases] == ["pat1"] and cases[0].segmentation.name == "OTMultiClass.nii.gz"


# --- the real folders ----------------------------------------------------------------------------------


@pytest.mark.skipif(not (DATA / "lgg_mri" / "slices.csv").is_file(), reason="shared lgg_mri data not available")
def test_real_lgg_split_is_by_patient_and_covers_the_institutions():
    slices = td.read_lgg(CFG["lgg"]["root"])
    patients = td.lgg_patients(slices)
    assert len(patients) == 98 and len(slices) == 3413
    split = td.lgg_split(slices, CFG)
    val = [p for p in patients if split[p] == "val"]
    assert 0.15 <= len(val) / len(patients) <= 0.25
    institutions = {s.institution for s in slices}
    big = {i for i in institutions if sum(patients[p][0].institution == i for p in patients) >= 3}
    assert big <= {patients[p][0].institution for p in val}
    assert all(any(s.tumour for s in patients[p]) for p in val)  # every validation patient has tumour slices


@pytest.mark.skipif(not (DATA / "ixi_t1" / "subjects.csv").is_file(), reason="shared ixi_t1 data not available")
def test_real_ixi_split_holds_ten_subjects():
    subjects = td.read_ixi(CFG["ixi"]["root"])
    assert len(subjects) == 50
    split = td.ixi_split(subjects, CFG)
    assert sum(v == "val" for v in split.values()) == 10


@pytest.mark.skipif(not (DATA / "brats2015_examples").is_dir(), reason="shared BraTS examples not available")
def test_real_brats_cases():
    cases = td.read_brats(CFG["brats"]["root"])
    assert len(cases) == 6 and all(c.t1c.is_file() and c.brain_mask.is_file() for c in cases)
