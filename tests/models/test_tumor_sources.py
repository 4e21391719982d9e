"""The tumour model's LGG and IXI training sources, the merged training data and its sampler."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medassist.models import tumor, tumor_sources, tumor_train
from medassist.models.spec import PreprocessSpec

PRE = PreprocessSpec(input_size=32)


def _lgg(tmp_path: Path, write_lgg_tree) -> dict:
    patients = {f"TCGA_{inst}_{i:04d}_20000101": (inst, 8, [4, 5]) for inst in ("AA", "BB") for i in range(5)}
    patients["TCGA_CC_0001_20000101"] = ("CC", 6, [])  # a patient without tumour slices
    write_lgg_tree(tmp_path / "lgg", patients)
    return {"lgg": {"root": str(tmp_path / "lgg"), "val_percent": 20, "salt": "test"}}


def test_lgg_slices_keep_masks_split_by_patient_and_drop_negatives_beside_the_tumour(tmp_path, write_lgg_tree):
    cfg = _lgg(tmp_path, write_lgg_tree)
    found = tumor_sources.lgg_slices(cfg, PRE, tmp_path / "lgg.npz", negative_margin_slices=1)
    assert found.origin == "lgg" and found.images.shape[1:] == (32, 32)
    tumour_patient = found.groups == "TCGA_AA_0000_20000101"
    # slices 1..8 with tumour at 4 and 5: slices 3 and 6 are next to it and left out
    assert sorted(found.positions[tumour_patient].tolist()) == [1, 2, 4, 5, 7, 8]
    assert len(found.positions[found.groups == "TCGA_CC_0001_20000101"]) == 6
    assert np.all(found.masks[found.labels == 1].reshape((found.labels == 1).sum(), -1).max(1) == 1)
    assert found.masks[found.labels == 0].max() == 0
    for patient in set(found.groups):
        assert len(set(found.splits[found.groups == patient])) == 1  # a patient never straddles the split
    assert {"train", "val"} <= set(found.splits)
    again = tumor_sources.lgg_slices(cfg, PRE, tmp_path / "lgg.npz", negative_margin_slices=1)
    np.testing.assert_array_equal(again.images, found.images)  # read back from the cache
    wider = tumor_sources.lgg_slices(cfg, PRE, tmp_path / "lgg.npz", negative_margin_slices=2)
    assert len(wider) < len(found)  # another margin is another cache, not the stale one


def test_frame_mask_follows_the_crop_and_letterbox():
    img = np.zeros((60, 90), np.float32)
    img[10:50, 20:80] = 100.0
    img[20:30, 30:40] = 250.0
    tensor, frame = tumor.prepare_slice(img, PRE)
    source_mask = np.zeros(img.shape, bool)
    source_mask[20:30, 30:40] = True
    mask = tumor.frame_mask(source_mask, frame)
    assert mask.shape == (32, 32) and mask.dtype == np.uint8
    bright = tensor[0].numpy() > 0.9
    assert mask[bright].mean() > 0.8 and bright[mask > 0].mean() > 0.5  # the mask sits on the bright patch
    back = frame.to_source(mask.astype(np.float32), img.shape)
    assert back[25, 35] > 0.5 and back[45, 70] < 0.5


def _ixi(tmp_path: Path, n_subjects: int = 5) -> dict:
    root = tmp_path / "ixi"
    root.mkdir()
    rows = ["subject,age,sex"]
    s, p, l = np.mgrid[0:24, 0:24, 0:24]
    head = ((s - 12) ** 2 + (p - 12) ** 2 + (l - 12) ** 2) < 10**2
    for i in range(n_subjects):
        subject = f"IXI{i:03d}-HH-{i:04d}"
        volume = np.where(head, 100.0 + 20 * np.cos(l / 3.0), 0.0).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 2.0, 1.0])), str(root / f"{subject}_T1.nii.gz"))
        rows.append(f"{subject},30,F")
    (root / "subjects.csv").write_text("\n".join(rows) + "\n")
    return {"ixi": {"root": str(root), "val_percent": 20, "salt": "test"}}


def test_ixi_slices_come_in_every_variant_split_by_subject(tmp_path):
    found = tumor_sources.ixi_slices(_ixi(tmp_path), PRE, tmp_path / "ixi.npz", slice_step=2)
    assert found.origin == "ixi" and found.labels.max() == 0 and found.masks.max() == 0
    assert set(found.variants) == set(tumor_sources.IXI_VARIANTS)
    assert set(found.splits[found.groups == found.groups[0]]) in ({"train"}, {"val"})
    assert (found.splits == "val").any() and (found.splits == "train").any()
    per = {v: int((found.variants == v).sum()) for v in tumor_sources.IXI_VARIANTS}
    assert per["thick"] < per["as_given"]  # 6 mm slabs of a 2 mm volume: fewer slices
    assert all(found.images[i].max() > 0 for i in range(len(found)))


def _figshare_cache(n: int = 20) -> tuple[dict, list]:
    rng = np.random.default_rng(0)
    labels = np.array([1, 0] * (n // 2))
    masks = np.zeros((n, 32, 32), np.uint8)
    masks[labels == 1, 8:12, 6:10] = 1
    cache = {"images": rng.integers(0, 255, (n, 32, 32), dtype=np.uint8), "masks": masks, "labels": labels,
             "types": np.where(labels == 1, 0, -1), "numbers": np.arange(n) * 60}
    records = [tumor.TumorRecord(int(k), "glioma" if y else "no_tumor", Path(f"{k}.jpg"), None)
               for y, k in zip(labels, cache["numbers"])]
    return cache, records


def _extra(origin: str, n: int, labels: np.ndarray) -> tumor_sources.SourceSlices:
    groups = np.array([f"{origin}{i // 4}" for i in range(n)])
    return tumor_sources.SourceSlices(
        origin=origin, images=np.full((n, 32, 32), 7, np.uint8), masks=np.zeros((n, 32, 32), np.uint8),
        labels=labels, groups=groups, splits=np.where(np.char.endswith(groups, "1"), "val", "train"),
        variants=np.array(["slice"] * n), positions=np.arange(n) % 4 + 1)


def test_training_data_merges_sources_and_keeps_their_splits():
    cache, records = _figshare_cache()
    lgg = _extra("lgg", 12, np.array([0, 1, 1, 0] * 3))
    ixi = _extra("ixi", 8, np.zeros(8, np.int64))
    data = tumor_train.training_data(cache, records, np.arange(0, 14), np.arange(14, 20), use_mirror=False,
                               extra=[lgg, ixi], block_size=100)
    assert len(data.images) == 40 and set(data.train_idx).isdisjoint(data.val_idx)
    assert len(data.train_idx) + len(data.val_idx) == 40
    strata = data.strata()
    assert set(strata) == {"figshare_tumour", "br35h_negative", "lgg_tumour", "lgg_negative", "ixi_negative"}
    val_groups = set(data.groups[data.val_idx])
    assert val_groups.isdisjoint(set(data.groups[data.train_idx]))
    assert {"lgg1", "ixi1"} <= val_groups
    assert np.all(data.types[data.origins != "figshare"] == -1)


def test_stratified_sampler_draws_the_configured_shares():
    gen = torch.Generator().manual_seed(0)
    strata = np.array(["a"] * 100 + ["b"] * 900 + ["c"] * 50)
    draw = tumor_train.stratified_sampler(strata, {"a": 0.5, "b": 0.25, "missing": 0.25}, 20000, gen).numpy()
    share = {k: float(np.mean(strata[draw] == k)) for k in "abc"}
    assert share["a"] == pytest.approx(2 / 3, abs=0.02) and share["b"] == pytest.approx(1 / 3, abs=0.02)
    assert share["c"] == 0.0  # a stratum without a share is never drawn
    with pytest.raises(ValueError, match="no rows"):
        tumor_train.stratified_sampler(strata, {"missing": 1.0}, 10, gen)
