"""medassist.ingest.percentiles: the histogram route gives np.percentile's numbers exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medassist.ingest.percentiles import percentile

QS = [(0.5, 99.5), (0.0, 100.0), (2.0, 98.0), (50.0,), (33.3, 66.6, 99.99)]


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.gamma(2.0, 300.0, size=(454, 373)).astype(np.float32),  # skewed, 12-bit-like
        rng.integers(0, 256, (450, 300)).astype(np.float32),  # 8-bit values as float: many ties
        np.round(rng.random((300, 200)) * 4095).astype(np.uint16),
        np.concatenate([np.zeros(100_000, np.float32), rng.random(50_000, dtype=np.float32)]),  # background spike
        rng.integers(-1024, 3000, (256, 256)).astype(np.int16),  # CT-like, negative values
        (rng.random((400, 300)) ** 8).astype(np.float32),  # most values crowded near zero
        rng.normal(0.0, 1e-3, (300, 300)) + 1e6,  # float64, narrow range far from zero
    ]


@pytest.mark.parametrize("index", range(7))
@pytest.mark.parametrize("qs", QS)
def test_equals_numpy_on_image_like_arrays(index, qs):
    image = _images()[index]
    np.testing.assert_array_equal(percentile(image, qs), np.asarray(np.percentile(image, qs), dtype=np.float64))


def test_constant_small_and_non_finite_inputs_follow_numpy():
    assert percentile(np.full((300, 300), 7.0, np.float32), (0.5, 99.5)).tolist() == [7.0, 7.0]
    small = np.arange(10.0)
    np.testing.assert_array_equal(percentile(small, (10, 90)), np.percentile(small, (10, 90)))
    with_nan = np.random.default_rng(1).random(50_000)
    with_nan[7] = np.nan
    assert np.isnan(percentile(with_nan, (0.5, 99.5))).all()


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(32_768, 60_000),
    distinct=st.integers(1, 5000),
    q=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_equals_numpy_for_any_value_count_and_ties(n, distinct, q, seed):
    rng = np.random.default_rng(seed)
    values = (rng.integers(0, distinct, n) * rng.random() * 10).astype(np.float32)
    np.testing.assert_array_equal(percentile(values, q), np.asarray(np.percentile(values, q), dtype=np.float64))
