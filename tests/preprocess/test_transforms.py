"""medassist.preprocess.transforms: the numpy/torch chain gives the numbers MONAI's transforms give."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Resize, ScaleIntensityRangePercentiles, SpatialPad

from medassist.models.spec import PreprocessSpec
from medassist.preprocess.transforms import PercentileScale, apply_letterbox, letterbox_for, prepare_2d


@pytest.mark.parametrize("shape,seed", [((454, 373), 0), ((64, 900), 1), ((2140, 1760), 2), ((7, 5), 3)])
@pytest.mark.parametrize("percentiles", [(0.5, 99.5), (0.0, 100.0), (2.0, 98.0)])
def test_percentile_scale_matches_monai(shape, seed, percentiles):
    rng = np.random.default_rng(seed)
    image = (rng.gamma(2.0, 300.0, size=shape)).astype(np.float32)  # skewed, 12-bit-like
    ours = PercentileScale(*percentiles)(image)
    monai = ScaleIntensityRangePercentiles(lower=percentiles[0], upper=percentiles[1], b_min=0.0, b_max=1.0,
                                           clip=True)(torch.as_tensor(image)[None])
    assert ours.dtype == np.float32 and ours.shape == shape
    np.testing.assert_allclose(ours, np.asarray(monai)[0], atol=1e-5)


def test_constant_image_scales_to_zeros_and_prepare_2d_pads_with_zeros():
    assert not PercentileScale(0.5, 99.5)(np.full((10, 20), 7.0)).any()
    tensor, box = prepare_2d(np.arange(200, dtype=np.float32).reshape(10, 20), PreprocessSpec(input_size=40))
    assert tensor.shape == (1, 40, 40) and box.resized_shape == (20, 40) and box.pad_before == (10, 0)
    assert float(tensor.min()) == 0.0 and float(tensor.max()) == pytest.approx(1.0)
    assert not tensor[0, :10].any() and not tensor[0, 30:].any()


@pytest.mark.parametrize("shape", [(454, 373), (373, 454), (64, 900), (2140, 1760), (448, 448), (7, 5), (301, 300)])
def test_letterbox_matches_monai_resize_and_pad(shape):
    image = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    monai = SpatialPad(spatial_size=(448, 448), mode="constant")(
        Resize(spatial_size=448, size_mode="longest", mode="area")(torch.as_tensor(image)[None]))
    ours = apply_letterbox(image, letterbox_for(shape, 448))
    assert ours.shape == (1, 448, 448) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), np.asarray(monai), atol=1e-6)


@pytest.mark.parametrize("shape", [(454, 373), (64, 900), (7, 5)])
def test_letterbox_to_source_matches_monai_bilinear_resize(shape):
    box = letterbox_for(shape, 448)
    heatmap = np.random.default_rng(1).random((448, 448), dtype=np.float32)
    (top, left), (rows, cols) = box.pad_before, box.resized_shape
    crop = heatmap[top : top + rows, left : left + cols]
    monai = Resize(spatial_size=shape, mode="bilinear", anti_aliasing=False)(crop[None])
    back = box.to_source(heatmap)
    assert back.shape == shape
    np.testing.assert_allclose(back, np.asarray(monai)[0], atol=1e-6)


# --- histogram equalisation of the non-zero pixels (fracture_xray 2.0.0's input normalisation) ---


def test_equalize_nonzero_ignores_a_sources_grey_level_mapping():
    from medassist.preprocess.transforms import equalize_nonzero

    rng = np.random.default_rng(0)
    image = rng.integers(1, 256, size=(1, 64, 64)).astype(np.float32) / 255.0
    image[:, :8] = 0  # padding
    x = torch.from_numpy(image)
    remapped = torch.where(x > 0, x ** 2.2, x)  # a monotonic grey-level habit of another source
    a, b = equalize_nonzero(x), equalize_nonzero(remapped)
    assert torch.equal(a[:, :8], torch.zeros_like(a[:, :8]))  # padding stays black
    assert float(a.max()) == 1.0
    assert float((a - b).abs().mean()) < 0.04  # the same picture (up to 256-level binning)
    assert float((x - remapped).abs().mean()) > 0.1


def test_prepare_2d_equalizes_only_when_the_spec_asks():
    from medassist.models.spec import PreprocessSpec
    from medassist.preprocess.transforms import prepare_2d

    image = np.linspace(0, 1, 40 * 30, dtype=np.float32).reshape(40, 30) ** 3
    plain, _ = prepare_2d(image, PreprocessSpec(input_size=32))
    equalized, _ = prepare_2d(image, PreprocessSpec(input_size=32, equalize=True))
    assert not torch.allclose(plain, equalized)
    inside = equalized[equalized > 0]
    assert abs(float(inside.mean()) - 0.5) < 0.05  # uniform after equalisation
