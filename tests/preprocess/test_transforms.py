"""medassist.preprocess.transforms: the numpy percentile scaling gives MONAI's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import ScaleIntensityRangePercentiles

from medassist.models.spec import PreprocessSpec
from medassist.preprocess.transforms import PercentileScale, prepare_2d


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
