"""medassist.preprocess.bias_field: N4 removes a known smooth multiplicative bias field."""

from __future__ import annotations

import numpy as np
import pytest

from medassist.datamodel import Geometry, Image
from medassist.errors import MedassistError
from medassist.preprocess.bias_field import n4_correct, n4_image, shrink_factors

SHAPE = (24, 48, 48)
SPACING = (2.0, 1.0, 1.0)


def _phantom(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A head-like ellipsoid (a smooth bright core in a darker shell, a little noise) on a zero
    background, times a smooth bias field (about x0.6 to x1.6 across the object); returns the
    biased volume, the object mask and the bias field."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    r = np.sqrt((z / 0.8) ** 2 + (y / 0.8) ** 2 + (x / 0.8) ** 2)
    inside = r < 1.0
    truth = np.where(inside, 100.0 + 20.0 * np.cos(np.pi * np.clip(r, 0, 1) / 2), 0.0)
    truth += np.random.default_rng(seed).normal(0.0, 1.0, SHAPE) * inside
    bias = np.exp(0.45 * x + 0.25 * y - 0.2 * z + 0.15 * x * y)
    return (truth * bias).astype(np.float32), inside, bias


def _cv(values: np.ndarray) -> float:
    return float(values.std() / values.mean())


def test_n4_flattens_a_known_bias_field_and_keeps_shape_and_dtype():
    biased, inside, _ = _phantom()
    corrected = n4_correct(biased, SPACING, shrink=2, iterations=(30, 30))
    assert corrected.shape == biased.shape and corrected.dtype == np.float32
    assert np.isfinite(corrected).all()
    before, after = _cv(biased[inside]), _cv(corrected[inside])
    assert before > 0.15  # the field dominates the object's variation (about 0.20)
    assert after < 0.25 * before, (before, after)  # about 0.02: a tenth


def test_n4_with_a_given_mask_and_float64_input():
    biased, inside, _ = _phantom(1)
    corrected = n4_correct(biased.astype(np.float64), SPACING, shrink=2, iterations=(30, 30), mask=inside)
    assert corrected.dtype == np.float64
    assert _cv(corrected[inside]) < 0.5 * _cv(biased[inside])


def test_n4_shifts_a_volume_whose_minimum_is_negative_and_back():
    """A mean/std-scaled volume (background at its minimum, as the BraTS examples): fitted as
    ``pixels - min``, returned on its own scale (background stays at the minimum)."""
    biased, inside, _ = _phantom(2)
    scaled = (biased - biased[inside].mean()) / biased[inside].std()
    corrected = n4_correct(scaled, SPACING, shrink=2, iterations=(30, 30))
    background = float(scaled.min())
    np.testing.assert_allclose(corrected[~inside], background, atol=1e-4)
    shifted = corrected[inside] - background
    assert _cv(shifted) < 0.5 * _cv(scaled[inside] - background)


def test_n4_image_keeps_geometry_and_rescales_display():
    biased, _, _ = _phantom(3)
    geometry = Geometry(spacing=SPACING, affine=np.diag([*SPACING, 1.0]))
    image = Image(pixels=biased, display=np.zeros_like(biased), geometry=geometry)
    out = n4_image(image, shrink=2, iterations=(10,))
    assert out.geometry is geometry and out.pixels.shape == SHAPE
    assert out.display.dtype == np.float32 and 0.0 <= out.display.min() and out.display.max() == pytest.approx(1.0)


def test_constant_volume_is_refused_not_returned_unchanged():
    with pytest.raises(MedassistError, match="N4 bias-field correction: the volume is constant"):
        n4_correct(np.full(SHAPE, 5.0, np.float32), SPACING)


@pytest.mark.parametrize("pixels,spacing,kwargs,message", [
    (np.ones((4, 4, 4, 4)), (1, 1, 1, 1), {}, "2D or 3D"),
    (np.arange(64.0).reshape(4, 4, 4), (1, 1), {}, "spacing"),
    (np.arange(64.0).reshape(4, 4, 4), (1, 1, 1), {"shrink": 0}, "at least 1"),
    (np.full((4, 4, 4), np.nan), (1, 1, 1), {}, "NaN or infinite"),
    (np.arange(64.0).reshape(4, 4, 4), (1, 1, 1), {"mask": np.zeros((4, 4, 4))}, "no voxel"),
    (np.arange(64.0).reshape(4, 4, 4), (1, 1, 1), {"mask": np.ones((2, 2, 2))}, "mask shape"),
])
def test_bad_inputs_raise_medassist_errors(pixels, spacing, kwargs, message):
    with pytest.raises(MedassistError, match=message):
        n4_correct(pixels, spacing, **kwargs)


def test_shrink_factors_spare_coarse_axes():
    assert shrink_factors((1.0, 1.0, 1.0), 4) == (4, 4, 4)
    assert shrink_factors((6.8, 1.0, 1.0), 4) == (1, 4, 4)
    assert shrink_factors((2.0, 0.94, 0.94), 4) == (2, 4, 4)
