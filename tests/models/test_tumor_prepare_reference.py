"""The optimised slice and volume preparation (``tumor.prepare_slice`` / ``prepare_volume``) gives
the very same network inputs as the straightforward code it replaced, kept here as the reference:
ndimage morphology and fill_holes, numpy's block mean, ``np.isin`` of the kept labels, ``F.pad``
and ``torch.stack``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from medassist.datamodel import Geometry, Image
from medassist.ingest.percentiles import percentile
from medassist.models import tumor
from medassist.models.spec import PreprocessSpec
from medassist.preprocess import morphology
from medassist.preprocess import volume as vol
from medassist.preprocess.transforms import apply_letterbox, letterbox_for
from tumour_model_helpers import tiny_tumour_model

# --- the reference: the per-slice code before the speed-up (issue 20) ------------------------------


def reference_head_mask(scaled: np.ndarray) -> np.ndarray:
    rows, cols = scaled.shape
    k = max(1, int(round(max(rows, cols) / 256)))
    small = scaled[: rows - rows % k, : cols - cols % k]
    if k > 1:
        small = small.reshape(small.shape[0] // k, k, small.shape[1] // k, k).mean(axis=(1, 3))
    otsu = vol.otsu_threshold(small)
    mask = small > max(0.04, 0.35 * otsu)
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3), bool), iterations=1)
    labels, n = ndimage.label(mask)
    if n:
        areas = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        keep = np.flatnonzero(areas >= max(0.05 * areas.max(), 0.002 * mask.size)) + 1
        mask = np.isin(labels, keep)
        mask = ndimage.binary_closing(mask, structure=np.ones((5, 5), bool), iterations=2)
        mask = ndimage.binary_fill_holes(mask)
        mask = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool))
    if k > 1:
        mask = np.repeat(np.repeat(mask, k, axis=0), k, axis=1)
    full = np.zeros((rows, cols), dtype=bool)
    full[: mask.shape[0], : mask.shape[1]] = mask
    return full


def reference_percentile_scale(image: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    img = np.asarray(image, dtype=np.float32)
    low, high = (float(v) for v in percentile(img, percentiles))
    if high <= low:
        return np.zeros_like(img)
    return np.clip((img - low) / (high - low), 0.0, 1.0)


def reference_prepare_2d(image: np.ndarray, pre: PreprocessSpec) -> torch.Tensor:
    box = letterbox_for(image.shape, pre.input_size)
    img = reference_percentile_scale(image, pre.percentiles)
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    if tuple(x.shape[-2:]) != box.resized_shape:
        x = F.interpolate(x, size=box.resized_shape, mode="area")
    (top, left), (rows, cols) = box.pad_before, box.resized_shape
    size = box.input_size
    return F.pad(x[0], (left, size - cols - left, top, size - rows - top))


def reference_prepare_slice(image2d: np.ndarray, pre: PreprocessSpec) -> tuple[torch.Tensor, tuple]:
    scaled = reference_percentile_scale(image2d, pre.percentiles)
    mask = reference_head_mask(scaled)
    rows, cols = scaled.shape
    if mask.sum() < 0.002 * mask.size:
        crop = (0, rows, 0, cols)
    else:
        rr, cc = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        margin = int(round(0.04 * max(rr[-1] - rr[0], cc[-1] - cc[0])))
        crop = (max(0, rr[0] - margin), min(rows, rr[-1] + 1 + margin),
                max(0, cc[0] - margin), min(cols, cc[-1] + 1 + margin))
        scaled = scaled * mask
    r0, r1, c0, c1 = crop
    return reference_prepare_2d(scaled[r0:r1, c0:c1], pre), crop


def reference_volume_inputs(spec, image: Image) -> torch.Tensor:
    settings = tumor.inference_settings(spec)
    volume, axes = vol.reorient_canonical(image, spec.preprocess.source)
    axis = vol.acquisition_plane(axes)
    ref = vol.intensity_reference(volume)
    inputs = []
    for _, chunk in vol.iter_slices(volume, axis, 16):
        fractions = np.array([vol.brain_fraction(s, ref) for s in chunk])
        inputs += [reference_prepare_slice(s, spec.preprocess)[0] for s in chunk[fractions >= settings["min_brain_fraction"]]]
    return torch.stack(inputs)


# --- synthetic data ---------------------------------------------------------------------------------


def noisy_head(slices: int, rows: int, cols: int, seed: int) -> np.ndarray:
    """A 12-bit-like head: bright rim, grey interior, a dark core, a burnt-in label, Gaussian noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[0:slices, 0:rows, 0:cols]
    r = np.sqrt(((x - cols / 2) / (0.36 * cols)) ** 2 + ((y - rows / 2) / (0.44 * rows)) ** 2
                + ((z - slices / 2) / (0.55 * slices)) ** 2)
    head = np.where(r < 1.0, 900.0 + 500.0 * (r > 0.9) - 200.0 * (r < 0.3), 0.0)
    head[:, 5:12, 5:40] = 1200.0  # text in a corner: not head
    head = head + rng.normal(0, 30, size=head.shape) * (r < 1.0) + rng.normal(0, 5, size=head.shape)
    return np.clip(head, 0, 4095).astype(np.float32)


@pytest.mark.parametrize("shape", [(512, 512), (601, 515), (300, 260), (800, 790)])  # k = 2, 2 (odd), 1, 3
def test_prepare_slice_equals_the_reference(shape):
    pre = PreprocessSpec(input_size=64)
    for seed, plane in enumerate(noisy_head(5, *shape, seed=len(shape) + shape[0])[[0, 2, 4]]):
        tensor, frame = tumor.prepare_slice(plane / 4095.0, pre)
        expected, crop = reference_prepare_slice(plane / 4095.0, pre)
        assert frame.crop == crop
        assert tensor.dtype == expected.dtype and tensor.shape == expected.shape
        assert torch.equal(tensor, expected)


def test_prepare_volume_equals_the_reference_slice_by_slice():
    """A 512 x 512 x 20 volume (two chunks of 16 slices, caps outside the brain)."""
    _, spec = tiny_tumour_model(input_size=64)
    pixels = noisy_head(20, 512, 512, seed=3)
    pixels[:2] = pixels[-2:] = 3.0  # empty caps: not scored
    affine = np.diag([0.0, 0.0, 0.0, 1.0])
    affine[2, 0], affine[1, 1], affine[0, 2] = 2.0, 0.5, 0.5
    image = Image(pixels=pixels, display=np.clip(pixels / 1800.0, 0, 1),
                  geometry=Geometry(spacing=(2.0, 0.5, 0.5), affine=affine))
    prepared = tumor.prepare_volume(spec, image)
    expected = reference_volume_inputs(spec, image)
    assert 0 < len(prepared.scored) < 20
    assert prepared.inputs.shape == expected.shape
    assert torch.equal(prepared.inputs, expected)


def _random_masks(seed: int, count: int = 40) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(count):  # from 8 pixels a side: scipy's binary_erosion crashed on 1-4 pixel arrays here
        shape = (int(rng.integers(8, 60)), int(rng.integers(8, 60)))
        masks.append(ndimage.binary_opening(rng.random(shape) < rng.uniform(0.2, 0.9)) | (rng.random(shape) < 0.05))
    return masks


@pytest.mark.parametrize("size", [1, 3, 5, 7])
@pytest.mark.parametrize("iterations", [1, 2])
def test_square_morphology_equals_ndimage(size, iterations):
    square = np.ones((size, size), bool)
    pairs = [(morphology.erode_square, ndimage.binary_erosion), (morphology.dilate_square, ndimage.binary_dilation),
             (morphology.open_square, ndimage.binary_opening), (morphology.close_square, ndimage.binary_closing)]
    for mask in _random_masks(size * 10 + iterations):
        for ours, theirs in pairs:
            assert np.array_equal(ours(mask, size, iterations), theirs(mask, structure=square, iterations=iterations))


def test_fill_holes_and_large_parts_equal_ndimage():
    for mask in _random_masks(7) + [np.zeros((20, 20), bool), np.ones((20, 20), bool)]:
        assert np.array_equal(tumor.fill_holes(mask), ndimage.binary_fill_holes(mask))
        labels, n = ndimage.label(mask)
        expected = mask
        if n:
            areas = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
            expected = np.isin(labels, np.flatnonzero(areas >= max(0.05 * areas.max(), 0.002 * mask.size)) + 1)
        assert np.array_equal(tumor.keep_large_parts(mask), expected)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_block_means_equal_numpys_mean_to_the_bit(k):
    rng = np.random.default_rng(k)
    image = rng.random((k * 97, k * 64), dtype=np.float32) * rng.choice([1e-3, 1.0, 1e3], size=(k * 97, k * 64))
    image = image.astype(np.float32)
    for view in (image, image[: k * 90, : k * 60]):  # contiguous and a strided crop
        expected = view.reshape(view.shape[0] // k, k, view.shape[1] // k, k).mean(axis=(1, 3))
        got = tumor.block_means(view, k)
        assert got.dtype == expected.dtype and np.array_equal(got, expected)


def test_letterbox_pads_as_f_pad():
    image = np.random.default_rng(0).random((70, 45), dtype=np.float32)
    for size in (64, 70, 128):
        box = letterbox_for(image.shape, size)
        x = torch.from_numpy(image)[None, None]
        if tuple(x.shape[-2:]) != box.resized_shape:
            x = F.interpolate(x, size=box.resized_shape, mode="area")
        (top, left), (rows, cols) = box.pad_before, box.resized_shape
        expected = F.pad(x[0], (left, size - cols - left, top, size - rows - top))
        assert torch.equal(apply_letterbox(image, box), expected)
