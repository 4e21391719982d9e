"""Volume-level validation (``tumor_volumes``): triage's scoring path, reported slices against the
tumour mask in the right index space, targets, errors instead of silent scores, JSON output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medassist.datamodel import Geometry, Image
from medassist.models import tumor, tumor_data
from medassist.models import tumor_volumes as tv
from medassist.models.registry import WEIGHTS_DIR
from tumour_model_helpers import tiny_tumour_model

DATA = Path(os.environ.get("MEDASSIST_DATA", "/work/shared/data"))


def _tiny_model():
    return tiny_tumour_model()


@pytest.fixture
def bright_blob_scores(monkeypatch):
    """Slice scores 0.99 where the network input holds the bright blob, else 0.01: a stand-in
    network whose answers the test knows, behind the real preparation and study rule. (Each slice
    is scaled to its own percentiles: with the blob, the rest of the head is dark.)"""

    def fake(network, spec, inputs):
        hot = [float(x[x > 0].median()) < 0.6 if (x > 0).any() else False for x in inputs]
        presence = np.where(hot, 0.99, 0.01)
        return presence, np.full((len(inputs), 3), 1 / 3)

    monkeypatch.setattr(tumor, "slice_probabilities", fake)


def _volume(n: int = 24, size: int = 40, blob_slices: range = range(10, 14)) -> tuple[np.ndarray, np.ndarray]:
    """A (slices, rows, cols) head with a bright blob on ``blob_slices``, and its tumour mask."""
    z, y, x = np.mgrid[0:n, 0:size, 0:size]
    r2 = ((z - n / 2) / (n / 2)) ** 2 + ((y - size / 2) / (size * 0.42)) ** 2 + ((x - size / 2) / (size * 0.38)) ** 2
    head = r2 < 1
    pixels = np.where(head, 80.0, 0.0)
    mask = np.zeros(pixels.shape, np.uint8)
    for k in blob_slices:
        mask[k, 13:21, 11:19] = 1  # big enough to survive the display scaling (99.5th percentile)
    pixels[mask > 0] = 250.0
    return pixels.astype(np.float32), mask


def _axial_image(pixels: np.ndarray, spacing=(2.0, 1.0, 1.0)) -> Image:
    affine = np.diag([0.0, 0.0, 0.0, 1.0])
    affine[2, 0], affine[1, 1], affine[0, 2] = spacing  # slice -> +S, row -> +P, col -> +L
    return Image(pixels=pixels, display=pixels / 250.0, geometry=Geometry(spacing=spacing, affine=affine))


def test_reported_slices_are_checked_against_the_mask(bright_blob_scores):
    pixels, mask = _volume()
    result = tv.score_image(_tiny_model(), _axial_image(pixels), source="brats", variant="as_given", name="v",
                            mask=_axial_image(mask.astype(np.float32)))
    assert result.flagged and result.error == "" and result.indices_are == "stored"
    assert result.tumour_slices == (10, 11, 12, 13)
    assert set(result.slices) <= set(result.tumour_slices) and result.slices_in_tumour == len(result.slices)
    assert result.localised is True and result.n_slices_over_threshold == 4 and result.n_slices == 24
    away, _ = _volume(blob_slices=range(3, 6))  # the blob somewhere the mask is not
    off = tv.score_image(_tiny_model(), _axial_image(away), source="brats", variant="as_given", name="w",
                         mask=_axial_image(mask.astype(np.float32)))
    assert off.flagged and off.slices_in_tumour == 0 and off.localised is False


def test_a_sagittally_stored_volume_is_compared_in_canonical_indices(bright_blob_scores, tmp_path):
    """Stored as IXI is (sagittal slices): the axial plane is a reformat, so the reported slices and
    the mask's slices are both canonical axial indices."""
    pixels, mask = _volume(n=32, size=32, blob_slices=range(20, 24))
    affine = np.array([[0, 0, 2.0, 0], [-2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 1]])  # voxel axes P, S, R

    def save(canonical: np.ndarray, name: str) -> Path:
        data = np.transpose(canonical, (1, 0, 2))[:, :, ::-1]  # canonical (S, P, L) -> (P, S, R)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data, np.float32), affine), str(tmp_path / name))
        return tmp_path / name

    image = tv.load_nifti(save(pixels, "v.nii.gz"))
    mask_image = tv.load_nifti(save(mask.astype(np.float32), "m.nii.gz"))
    result = tv.score_image(_tiny_model(), image, source="brats", variant="as_given", name="v", mask=mask_image)
    assert result.indices_are == "canonical" and result.plane == "axial"
    assert result.tumour_slices == (20, 21, 22, 23) and result.localised is True


def test_a_volume_without_a_brain_is_an_error_not_a_score():
    noise = np.random.default_rng(0).uniform(0, 1, (20, 40, 40)).astype(np.float32)
    for pixels in (np.zeros((20, 40, 40), np.float32), noise):
        result = tv.score_image(_tiny_model(), _axial_image(pixels), source="ixi", variant="as_given", name="x")
        assert result.score is None and not result.flagged
        assert result.error.startswith(tumor.NO_BRAIN)


def _score(source: str, flagged: bool, slices=(), tumour=None, error="") -> tv.VolumeScore:
    return tv.VolumeScore(source, "v", "n", None if error else 0.5, 0.4, flagged, tuple(slices), "stored", "axial",
                          5.0, 20, 18, 1, 0.6, tumour, error)


def test_targets():
    brats = [_score("brats", True, (3, 4), (2, 3, 4, 5))] * 6
    assert tv.SourceReport("brats", "as_given", tuple(brats)).target_met
    partly = brats[:5] + [_score("brats", True, (3, 9), (2, 3, 4))]
    assert not tv.SourceReport("brats", "as_given", tuple(partly)).target_met  # one slice outside the tumour
    lgg = [_score("lgg", True, (1,), (1,))] * 18 + [_score("lgg", False, (), (1,))] * 2
    assert tv.SourceReport("lgg", "stack", tuple(lgg)).target_met  # 18/20 = 90%
    assert not tv.SourceReport("lgg", "stack", tuple(lgg[1:] + [_score("lgg", False, (), (1,))])).target_met
    ixi = [_score("ixi", False)] * 9 + [_score("ixi", True, (5,))]
    assert tv.SourceReport("ixi", "as_given", tuple(ixi)).target_met  # 1 in 10
    assert not tv.SourceReport("ixi", "as_given", tuple(ixi[:9] + [_score("ixi", False, error="x")])).target_met
    assert not tv.SourceReport("ixi", "as_given", ()).target_met


def test_lgg_stacks_are_scored_through_nifti_with_the_assumed_spacing(tmp_path, write_lgg_tree):
    write_lgg_tree(tmp_path, {"TCGA_AA_0001": ("AA", 12, [5, 6, 7]), "TCGA_BB_0002": ("BB", 10, [])})
    patients = tumor_data.lgg_patients(tumor_data.read_lgg(tmp_path))
    report = tv.validate_lgg(_tiny_model(), patients)
    first, second = report.volumes
    assert (first.name, first.variant, first.plane, first.indices_are) == ("TCGA_AA_0001", "stack", "axial", "stored")
    assert first.spacing_mm == pytest.approx(tumor_data.LGG_COVERAGE_MM / 12, abs=1e-3)
    assert first.tumour_slices == (4, 5, 6)  # slices 5-7, counted from 0
    assert second.tumour_slices == () and second.localised is False and report.n_errors == 0
    given = tv.validate_lgg(_tiny_model(), patients, slice_spacing_mm=3.0)
    assert given.volumes[0].spacing_mm == pytest.approx(3.0)


def test_the_whole_report_is_json(tmp_path, bright_blob_scores):
    pixels, mask = _volume()
    report = tv.VolumeValidation("m", "2.0.0", 0.5, (tv.SourceReport("brats", "as_given", (
        tv.score_image(_tiny_model(), _axial_image(pixels), source="brats", variant="as_given", name="v",
                       mask=_axial_image(mask.astype(np.float32))),)),), assumptions=tv.assumptions(None, None))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["all_targets_met"] is True
    entry = data["sources"]["brats/as_given"]
    assert entry["n_localised"] == 1 and entry["volumes"][0]["tumour_slices"] == [10, 11, 12, 13]


def test_ixi_subjects_are_scored_as_given_and_skull_stripped(tmp_path):
    pixels, _ = _volume(n=32, size=32, blob_slices=range(0))
    data = np.transpose(pixels, (1, 0, 2))[:, :, ::-1]  # stored like IXI (voxel axes P, S, R)
    affine = np.array([[0, 0, 2.0, 0], [-2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), str(tmp_path / "IXI001-HH-0001_T1.nii.gz"))
    subject = tumor_data.IxiSubject("IXI001-HH-0001", tmp_path / "IXI001-HH-0001_T1.nii.gz", 30.0, "F")
    missing = tumor_data.IxiSubject("IXI002-HH-0002", tmp_path / "absent.nii.gz", None, "")
    reports = tv.validate_ixi(_tiny_model(), [subject, missing])
    assert [(r.source, r.variant, r.n_volumes, r.n_errors) for r in reports] == \
           [("ixi", "as_given", 2, 1), ("ixi", "skull_stripped", 2, 1)]
    for r in reports:
        good = r.volumes[0]
        assert good.error == "" and good.plane == "axial" and good.indices_are == "canonical"
        assert good.tumour_slices is None and good.localised is None and r.n_localised is None
        assert "absent.nii.gz" in r.volumes[1].error and r.volumes[1].score is None


@pytest.mark.skipif(not (WEIGHTS_DIR / "tumor_mri.pt").is_file() or not (DATA / "lgg_mri").is_dir(),
                    reason="tumour weights or shared lgg_mri data not available")
def test_validation_smoke_run_on_a_real_lgg_stack():
    """One LGG validation stack with the shipped model, through ``validate_volumes``."""
    from medassist.models.registry import load_model, spec_by_name

    model = load_model(spec_by_name("tumor_mri"), torch.device("cpu"))
    report = tv.validate_volumes(model, {"lgg": {"root": str(DATA / "lgg_mri")}}, sources=("lgg",), limit=1)
    (lgg,) = report.reports
    assert (lgg.source, lgg.variant, lgg.n_volumes, lgg.n_errors) == ("lgg", "stack", 1, 0)
    v = lgg.volumes[0]
    assert v.plane == "axial" and 0 <= v.score <= 1 and v.n_in_brain > 0 and v.tumour_slices
    assert v.spacing_mm == pytest.approx(tumor_data.lgg_spacing_mm(v.n_slices), abs=1e-3)
    assert json.loads(json.dumps(report.to_dict()))["model"] == "tumor_mri"
