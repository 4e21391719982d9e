"""PSI on fixed reference bins, its bootstrap interval, KS, and the flag-rate band."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest, ks_2samp

from medassist.monitor import drift as D


def test_psi_matches_a_hand_computed_value():
    reference = np.array([0.1, 0.2, 0.6, 0.7])  # 2 | 2 either side of 0.5
    current = np.array([0.1, 0.6, 0.7, 0.8])  # 1 | 3
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert D.psi(reference, current, np.array([0.5])) == pytest.approx(expected)
    assert expected == pytest.approx(0.274653, abs=1e-6)


def test_an_empty_bin_counts_as_a_small_proportion_not_infinity():
    value = D.psi(np.array([0.1, 0.9]), np.array([0.9, 0.95]), np.array([0.5]))
    expected = (D.EMPTY_BIN - 0.5) * math.log(D.EMPTY_BIN / 0.5) + (1.0 - 0.5) * math.log(1.0 / 0.5)
    assert value == pytest.approx(expected)


def test_reference_edges_are_the_reference_quantiles_and_fewer_for_a_small_reference():
    reference = np.arange(100) / 100
    edges = D.reference_edges(reference, 10, 5)
    assert edges == pytest.approx(np.quantile(reference, np.arange(1, 10) / 10))
    counts = D.bin_counts(reference, edges)
    assert counts.tolist() == [10] * 10
    assert len(D.reference_edges(reference[:20], 10, 5)) == 3  # 20 // 5 = 4 bins
    assert D.reference_edges(reference[:9], 10, 5) is None  # 9 // 5 = 1 bin: no PSI


def test_bins_hold_lower_edge_inclusive_scores():
    assert D.bin_counts(np.array([0.2, 0.5, 0.5, 0.9]), np.array([0.5])).tolist() == [1, 3]


def test_compare_scores_reports_psi_interval_and_ks():
    rng = np.random.default_rng(0)
    reference, current = rng.beta(2, 5, 500), rng.beta(2, 5, 300) + 0.1
    edges = D.reference_edges(reference, 10, 5)
    d = D.compare_scores(reference, current, edges, psi_moderate=0.1, psi_major=0.25, n_resamples=300,
                         confidence_level=0.95, seed=0)
    assert d.psi == pytest.approx(D.psi(reference, current, edges))
    assert d.level == "major" and d.psi > 0.25
    assert d.psi_ci[0] < d.psi < d.psi_ci[1]
    ks = ks_2samp(reference, current)
    assert d.ks_statistic == pytest.approx(ks.statistic) and d.ks_p_value == pytest.approx(ks.pvalue)
    assert sum(d.reference_proportions) == pytest.approx(1) and sum(d.current_proportions) == pytest.approx(1)


def test_psi_interval_is_reproducible_and_narrows_with_more_data():
    rng = np.random.default_rng(1)
    ref_small, cur_small = rng.beta(2, 5, 60), rng.beta(2, 5, 60)
    ref_big, cur_big = rng.beta(2, 5, 3000), rng.beta(2, 5, 3000)
    kwargs = dict(n_resamples=300, confidence_level=0.95, seed=0)
    edges = D.reference_edges(ref_small, 5, 5)
    small = D.psi_interval(ref_small, cur_small, edges, **kwargs)
    assert small == D.psi_interval(ref_small, cur_small, edges, **kwargs)
    big = D.psi_interval(ref_big, cur_big, D.reference_edges(ref_big, 5, 5), **kwargs)
    assert big[1] - big[0] < (small[1] - small[0]) / 3


def test_flag_rate_band_is_the_wilson_interval_at_the_effective_size():
    band = D.flag_rate_band(200, 40, 200, 40, 0.99)  # effective size 1 / (1/200 + 1/200) = 100
    ci = binomtest(20, 100).proportion_ci(0.99, method="wilson")
    assert (band.low, band.high) == pytest.approx((ci.low, ci.high))
    assert not band.outside
    doubled = D.flag_rate_band(200, 40, 200, 80, 0.99)
    assert doubled.current_rate == pytest.approx(0.4) and doubled.outside
