"""The brain-MRI tumour model: split, slice preprocessing, box masks, augmentation, volume scoring."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medassist.datamodel import Image
from medassist.models import tumor, tumor_train
from medassist.models.spec import ModelSpec, PreprocessSpec
from medassist.models.train import load_config
from tumour_model_helpers import head_image, tiny_tumour_model

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("MEDASSIST_DATA", "/work/shared/data")) / "brain_tumor"
CONFIG = REPO / "configs" / "tumor_mri.yaml"


def _blocks(numbers, block_size):
    return {int(n) // block_size for n in numbers}


def test_split_is_by_whole_blocks():
    data = load_config(CONFIG)["data"]
    numbers = np.arange(1, 4565)
    split = np.array([tumor.split_of(int(n), block_size=data["block_size"], n_folds=data["n_folds"],
                                     val_fold=data["val_fold"]) for n in numbers])
    train, val = numbers[split == "train"], numbers[split == "val"]
    assert not _blocks(train, data["block_size"]) & _blocks(val, data["block_size"])
    assert 0.15 < len(val) / len(numbers) < 0.25


@pytest.mark.skipif(not DATA.is_dir(), reason="shared brain tumour data not available")
def test_split_of_the_real_records_shares_no_block_and_covers_every_class():
    config = load_config(CONFIG)
    records = tumor.read_records(DATA)
    assert len(records) == 3904
    train_idx, val_idx = tumor.split_indices(records, config["data"])
    bs = config["data"]["block_size"]
    assert not _blocks([records[i].number for i in train_idx], bs) & _blocks([records[i].number for i in val_idx], bs)
    for folder in tumor.CLASS_FOLDERS:
        assert sum(records[i].folder == folder for i in val_idx) >= 50, folder
    assert all(r.box is not None for r in records if r.tumour)
    assert all(r.box is None for r in records if not r.tumour)
    no_tumor = [r.number for r in records if not r.tumour]
    assert min(no_tumor) > max(r.number for r in records if r.tumour)  # numbered after figshare


def _synthetic_slice(shape=(300, 240), blob=(150, 100), text=True) -> np.ndarray:
    """A grey 'head' ellipse with a bright blob, noise outside, optional burnt-in text in a corner."""
    rng = np.random.default_rng(0)
    img = rng.normal(8, 3, shape)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    head = ((yy - shape[0] / 2) / (shape[0] * 0.4)) ** 2 + ((xx - shape[1] / 2) / (shape[1] * 0.35)) ** 2 <= 1
    img[head] = 120
    img[np.hypot(yy - blob[0], xx - blob[1]) < 12] = 250
    if text:
        img[5:9, 5:60:3] = 255  # thin bright strokes, like a watermark
    return np.clip(img, 0, 255).astype(np.float32)


def test_prepare_slice_crops_to_the_head_and_zeroes_the_background():
    pre = PreprocessSpec(input_size=128)
    img = _synthetic_slice()
    x, frame = tumor.prepare_slice(img, pre)
    assert x.shape == (1, 128, 128) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    r0, r1, c0, c1 = frame.crop
    assert r0 > 10 and c0 > 10  # the watermark and empty margins are cropped away
    a = x[0].numpy()
    assert np.all(a[:4] == 0) and np.all(a[:, :4] == 0)  # background exactly 0 (no noise cue)
    # the blob is where the letterbox says
    yy, xx = np.unravel_index(np.argmax(a), a.shape)
    box = (100 / 240, 150 / 300, 24 / 240, 24 / 300)  # xc, yc, w, h of the blob
    mask = tumor.box_mask(box, img.shape, frame)
    assert mask[yy, xx] == 1 and 0 < mask.sum() < 0.1 * mask.size
    back = frame.to_source(np.asarray(mask, np.float32), img.shape)
    assert back.shape == img.shape and back[150, 100] > 0.5


def test_prepare_slice_handles_an_empty_slice():
    x, frame = tumor.prepare_slice(np.zeros((64, 80), np.float32), PreprocessSpec(input_size=32))
    assert x.shape == (1, 32, 32) and float(x.abs().sum()) == 0
    assert frame.crop == (0, 64, 0, 80)


def test_augmentation_keeps_the_tumour_inside_the_stripped_brain():
    gen = torch.Generator().manual_seed(0)
    size = 64
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    head = (((yy - 32) / 28) ** 2 + ((xx - 32) / 24) ** 2 <= 1).float()
    x = (head * 0.5)[None, None].repeat(4, 1, 1, 1)
    m = torch.zeros_like(x)
    m[:, :, 8:14, 28:36] = 1  # a peripheral (meningioma-like) lesion at the top of the head
    x = x + m * 0.5
    aug = dict(load_config(CONFIG)["train"]["augment"], skull_strip_p=1.0)
    xs, ms = tumor_train.simulate_skull_strip(x, m, 1.0, gen)
    assert xs.shape == x.shape and ms.shape == m.shape
    for i in range(4):
        assert ms[i].sum() > 0 and float((xs[i] * ms[i]).sum()) > 0  # the lesion survives, visible
    xa, ma = tumor_train.augment_tumor_batch(x, m, aug, gen)
    assert xa.shape == x.shape and float(xa.min()) >= 0 and float(xa.max()) <= 1


def _symmetric_head(size=96, blob_col=30):
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size), np.float32)
    head = ((yy - 48) / 40) ** 2 + ((xx - 48) / 34) ** 2 <= 1
    img[head] = 100 + 40 * np.cos((yy[head] - 48) / 6.0)  # left-right symmetric structure
    mask = np.zeros((size, size), np.uint8)
    blob = np.hypot(yy - 40, xx - blob_col) < 6
    img[blob] = 250
    mask[blob] = 1
    return np.clip(img, 0, 255).astype(np.uint8), mask


def test_mirror_negative_erases_a_lateral_tumour_only():
    img, mask = _symmetric_head(blob_col=28)
    neg = tumor_train.mirror_negative(img, mask)
    assert neg is not None and neg.shape == img.shape
    assert neg[mask > 0].max() < 200  # the blob is gone ...
    far = np.ones_like(mask, bool)
    far[20:60, 10:50] = False
    assert np.array_equal(neg[far], img[far])  # ... the rest is untouched
    mid, mid_mask = _symmetric_head(blob_col=48)
    assert tumor_train.mirror_negative(mid, mid_mask) is None  # midline (pituitary-like): never erased
    skew = img.copy()
    skew[:, 48:] = skew[:, 48:] // 3  # not left-right symmetric (like a sagittal slice)
    assert tumor_train.mirror_negative(skew, mask) is None


def test_epoch_sampler_shares():
    gen = torch.Generator().manual_seed(0)
    labels = np.array([1] * 600 + [0] * 400)
    kinds = np.array([0] * 600 + [1] * 100 + [0] * 300)
    draw = tumor_train.epoch_sampler(labels, kinds, 0.45, 0.25, gen).numpy()
    draw = np.concatenate([draw, tumor_train.epoch_sampler(labels, kinds, 0.45, 0.25, gen).numpy()])
    assert np.mean(labels[draw] == 1) == pytest.approx(0.45, abs=0.04)
    assert np.mean(kinds[draw] == 1) == pytest.approx(0.25, abs=0.04)


def test_shortcut_probe_flags_a_planted_source_cue():
    rng = np.random.default_rng(0)
    n = 120
    images = np.zeros((n, 32, 32), np.uint8)
    labels = np.arange(n) % 2
    images[:, 4:28, 4:28] = rng.integers(60, 200, (n, 24, 24))
    images[labels == 1, 4:28, 4:28] //= 2  # a global intensity cue
    idx = np.arange(n)
    out = tumor_train.shortcut_probe(images, labels, idx[idx % 5 != 0], idx[idx % 5 == 0])
    assert out["probe_auroc"] > 0.95


def _tiny_model(input_size=32):
    return tiny_tumour_model(input_size, validation={"inference": {"null_logit": {"mean": -3.0, "std": 1.5}}})


def test_score_volume_skips_slices_outside_the_brain():
    net, spec = _tiny_model()
    image = head_image()
    res = tumor.score_volume(net, spec, image, batch=8)
    assert res.plane == "axial" and res.window_slices == 2
    assert len(res.slice_scores) == 20
    assert not res.in_brain[0] and not res.in_brain[-1]
    assert res.slice_scores[0] == 0 and res.slice_scores[-1] == 0
    assert 0 <= res.score <= 1 and isinstance(res.flagged, bool)
    assert set(res.type_probabilities) == set(tumor.TYPE_LABELS)


def test_scored_volume_is_a_frozen_typed_record():
    """``score_prepared_volume`` returns a ``ScoredVolume``: the fields (in the former dict's key order,
    "type" now ``type_probabilities``), their types, and no assignment."""
    import dataclasses
    import typing

    net, spec = _tiny_model()
    image = head_image()
    res = tumor.score_prepared_volume(net, spec, tumor.prepare_volume(spec, image))
    assert isinstance(res, tumor.ScoredVolume)
    assert [f.name for f in dataclasses.fields(res)] == [
        "score", "threshold", "flagged", "slices", "indices_are", "slice_scores", "in_brain",
        "type_probabilities", "plane", "spacing_mm", "window_slices"]
    assert type(res.score) is float and type(res.threshold) is float and type(res.flagged) is bool
    assert type(res.slices) is tuple and all(type(i) is int for i in res.slices)
    assert res.indices_are in typing.get_args(tumor.IndicesAre)
    assert res.slice_scores.dtype == np.float64 and res.in_brain.dtype == bool
    assert res.slice_scores.shape == res.in_brain.shape == (20,)
    assert all(type(v) is float for v in res.type_probabilities.values())
    assert res.plane == "axial" and type(res.spacing_mm) is float and type(res.window_slices) is int
    assert res.flagged == (res.score >= res.threshold)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.score = 0.0  # type: ignore[misc]


def test_evaluate_normal_volumes_reports_every_variant(tmp_path):
    net, spec = _tiny_model()
    data = np.transpose(head_image(n=24, spacing=(1.0, 1.0, 1.0)).pixels, (2, 1, 0))  # (i, j, k)
    path = tmp_path / "normal.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, -1.0, 1.0, 1.0])), str(path))
    report = tumor.evaluate_normal_volumes((net, spec), [path])
    entry = report["volumes"]["normal"]
    assert set(entry) == {"original", "thick", "skull_stripped"}
    assert entry["thick"]["spacing_mm"] == pytest.approx(5.0)
    assert entry["original"]["n_slices"] == 24 and entry["thick"]["n_slices"] == 4
    for v in entry.values():
        assert 0 <= v["fraction_slices_flagged"] <= 1 and isinstance(v["flagged"], bool)
    assert report["all_clear"] == (not any(v["flagged"] for v in entry.values()))


@pytest.mark.skipif(not DATA.is_dir(), reason="shared brain tumour data not available")
def test_training_smoke_run_writes_a_loadable_model(tmp_path):
    """Two steps of one epoch through the whole trainer (data, augmentation, loss, validation,
    threshold, weights with sha256, spec), on the device ``choose_device`` picks."""
    from medassist.models.registry import choose_device, load_model
    from medassist.models.spec import read_spec

    config = load_config(CONFIG)
    config["data"]["root"] = str(DATA)
    config["train"].update(epochs=1, max_steps=2)
    config["output"].update(weights_dir=str(tmp_path / "weights"), model_card=str(tmp_path / "card.md"),
                            checkpoints=str(tmp_path / "checkpoints"))
    if not (REPO / config["output"]["cache"]).is_file():
        pytest.skip("slice cache not built here (medassist train builds it: minutes)")
    spec = tumor_train.train_tumor(config, device=choose_device("auto"))
    assert 0.0 < spec.threshold < 1.0 and len(spec.sha256) == 64
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    model = load_model(read_spec(tmp_path / "weights" / "tumor_mri.json"), torch.device("cpu"), tmp_path / "weights")
    assert model.network.training is False


# --- no silent scores: a volume without a brain is an error ------------------------------------------


def _no_brain_volumes() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    head = head_image().pixels
    inf_voxel = head.copy()
    inf_voxel[7, 3, 3] = np.inf
    return {
        "empty": np.zeros((20, 48, 48), np.float32),
        "constant": np.full((20, 48, 48), 7.0, np.float32),
        "a dot": np.pad(np.ones((1, 2, 2), np.float32), ((0, 19), (0, 46), (0, 46))),
        "NaN": np.where(head > 50, np.nan, head).astype(np.float32),
        "inf": inf_voxel,
        "uniform noise": rng.uniform(0, 1, (20, 48, 48)).astype(np.float32),
        "gaussian noise": rng.normal(0, 1, (20, 48, 48)).astype(np.float32),
    }


@pytest.mark.parametrize("kind", list(_no_brain_volumes()))
def test_prepare_volume_refuses_a_volume_without_a_brain(kind):
    from medassist.errors import MedassistError

    _, spec = _tiny_model()
    image = head_image()
    pixels = _no_brain_volumes()[kind]
    image = Image(pixels=pixels, display=pixels, geometry=image.geometry)
    with pytest.raises(MedassistError, match=f"^{tumor.NO_BRAIN}: "):
        tumor.prepare_volume(spec, image)


def test_a_noisy_head_is_still_a_head():
    _, spec = _tiny_model()
    image = head_image()
    noisy = image.pixels + np.random.default_rng(1).normal(0, 60, image.pixels.shape).astype(np.float32)
    prepared = tumor.prepare_volume(spec, Image(pixels=noisy, display=noisy, geometry=image.geometry))
    assert len(prepared.scored) > 10


def test_indices_are_says_the_plane_even_without_flagged_slices(tmp_path):
    """Stored sagittally (as IXI), scored axially: canonical indices, whether slices are reported or not."""
    net, spec = _tiny_model()
    data = np.transpose(head_image(n=24, spacing=(1.0, 1.0, 1.0)).pixels, (1, 0, 2))[:, :, ::-1]
    affine = np.array([[0, 0, 1.0, 0], [-1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])  # voxel axes P, S, R
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), str(tmp_path / "sag.nii.gz"))
    from medassist.ingest.nifti import read_nifti_series

    spec = ModelSpec(**{**spec.__dict__, "threshold": 1.0})  # nothing reaches it: no slice reported
    res = tumor.score_volume(net, spec, read_nifti_series(str(tmp_path / "sag.nii.gz")).load())
    assert res.plane == "axial" and res.slices == () and res.indices_are == "canonical"


def _skull_on_head(size=256):
    """Bright scalp ring, dark skull, mid-grey brain, a bright lesion at the brain's edge."""
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot((yy - 128) / 1.1, xx - 128)
    img = np.zeros((size, size), np.float32)
    img[r < 110] = 0.9   # scalp and fat
    img[r < 100] = 0.08  # skull (dark on T1)
    img[r < 88] = 0.5    # brain
    lesion = np.hypot(yy - 128, xx - 210) < 8  # reaches into the skull gap
    img[lesion] = 1.0
    return img, lesion, r < 88


def test_brain_region_cuts_the_scalp_off_and_keeps_the_lesion():
    img, lesion, brain = _skull_on_head()
    region = tumor_train.brain_region(img, lesion)
    assert region is not None
    assert region[lesion].all()                      # the tumour is never stripped
    overlap = (region & brain).sum() / (region | brain).sum()
    assert overlap > 0.9                             # the brain, not the head
    assert not region[128, 128 + 105]                # scalp removed
    flat = np.where(img > 0, 0.5, 0).astype(np.float32)  # no skull gap: not found, the caller falls back
    assert tumor_train.brain_region(flat, np.zeros_like(lesion)) is None


def test_skull_strip_simulation_keeps_the_brain_and_zooms_it_to_the_frame():
    img, lesion, brain = _skull_on_head()
    x = torch.from_numpy(img)[None, None]
    m = torch.from_numpy(lesion.astype(np.float32))[None, None]
    xs, ms = tumor_train.simulate_skull_strip(x, m, 1.0, torch.Generator().manual_seed(0))
    assert ms.sum() > m.sum()                        # zoomed in: the lesion got bigger
    assert float((xs * ms).sum()) > 0                # and is still visible
    kept = xs[0, 0] > 0
    rows = torch.nonzero(kept.any(1)).flatten()
    assert rows[0] < 16 and rows[-1] > 240           # the brain fills the frame
    assert float(xs[0, 0][kept].median()) < 0.9      # brain grey kept, the bright scalp ring gone
