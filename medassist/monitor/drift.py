"""Score drift against a reference: PSI on fixed reference bins (with a bootstrap interval), the
two-sample Kolmogorov-Smirnov test, and the band of flag rates chance alone explains.

PSI = sum over bins of (c - r) * ln(c / r), with r and c the reference's and the current scores'
proportions per bin; a proportion of 0 counts as ``EMPTY_BIN`` so the logarithm stays finite.
The bins are the reference's quantiles, computed once from the reference (:func:`reference_edges`).

A reference given only as counts per bin and a CDF (a model card's validation distribution,
:mod:`medassist.monitor.card_reference`) is compared with :func:`compare_binned`: the same PSI,
its bootstrap resampling the reference as a multinomial of its N cases over its bins, and a
one-sample KS statistic against the reference CDF with the two-sample p-value at the effective size.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

from medassist.metrics import wilson_interval

EMPTY_BIN = 1e-4  # proportion an empty bin counts as in the PSI


@dataclass(frozen=True)
class ScoreSummary:
    """Scores of one model version in one period: counts, flag rate and quantiles."""

    n_findings: int
    n_studies: int
    n_flagged: int
    flag_rate: float | None
    mean: float | None
    quantiles: dict[str, float]  # p05, p25, p50, p75, p95


@dataclass(frozen=True)
class Drift:
    """The scores of a period against the reference's, on the reference's fixed bins."""

    n_reference: int
    n_current: int
    edges: tuple[float, ...]  # interior bin edges; bin i holds edges[i-1] <= score < edges[i]
    reference_proportions: tuple[float, ...]
    current_proportions: tuple[float, ...]
    psi: float
    psi_ci: tuple[float | None, float | None]
    ks_statistic: float
    ks_p_value: float
    level: str  # "stable" (< psi_moderate), "moderate", "major" (> psi_major)
    method: str = "reference scores: PSI bootstrap resamples both samples; two-sample KS (scipy.stats.ks_2samp)"


@dataclass(frozen=True)
class FlagRateBand:
    """The current flag rate against the band of rates the reference rate explains by chance."""

    reference_rate: float
    current_rate: float
    low: float
    high: float
    confidence: float
    outside: bool  # the current rate lies outside low..high


def summarise_scores(scores: np.ndarray, flagged: np.ndarray, studies: list[str]) -> ScoreSummary:
    """Counts, flag rate, mean and quantiles of one period's scores."""
    scores = np.asarray(scores, dtype=float)
    n = len(scores)
    n_flagged = int(np.sum(np.asarray(flagged, dtype=bool)))
    names = ("p05", "p25", "p50", "p75", "p95")
    quantiles = dict(zip(names, map(float, np.quantile(scores, [0.05, 0.25, 0.5, 0.75, 0.95])))) if n else {}
    return ScoreSummary(
        n_findings=n, n_studies=len(set(studies)), n_flagged=n_flagged, flag_rate=n_flagged / n if n else None,
        mean=float(scores.mean()) if n else None, quantiles=quantiles,
    )


def reference_edges(reference: np.ndarray, n_bins: int, min_per_bin: int) -> np.ndarray | None:
    """Interior edges of the PSI bins: the reference's quantiles at 1/k ... (k-1)/k, repeated
    values merged, with k = min(n_bins, len(reference) // min_per_bin); None when k < 2."""
    reference = np.asarray(reference, dtype=float)
    k = min(n_bins, len(reference) // max(min_per_bin, 1))
    if k < 2:
        return None
    return np.unique(np.quantile(reference, np.arange(1, k) / k))


def bin_counts(scores: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """How many scores fall in each bin (``edges[i-1] <= score < edges[i]``)."""
    return np.bincount(np.searchsorted(edges, np.asarray(scores, dtype=float), side="right"),
                       minlength=len(edges) + 1)


def psi_from_proportions(reference: np.ndarray, current: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """PSI of two arrays of bin proportions (along ``axis``), empty bins counted as EMPTY_BIN."""
    r = np.maximum(np.asarray(reference, dtype=float), EMPTY_BIN)
    c = np.maximum(np.asarray(current, dtype=float), EMPTY_BIN)
    return np.sum((c - r) * np.log(c / r), axis=axis)


def psi(reference: np.ndarray, current: np.ndarray, edges: np.ndarray) -> float:
    """PSI of the current scores against the reference scores on the given fixed bins."""
    r, c = bin_counts(reference, edges), bin_counts(current, edges)
    return float(psi_from_proportions(r / r.sum(), c / c.sum()))


def _batched_proportions(samples: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin proportions of each row of a (resamples, n) array, in one bincount."""
    samples = np.atleast_2d(samples)
    k = len(edges) + 1
    ids = np.searchsorted(edges, samples, side="right") + k * np.arange(samples.shape[0])[:, None]
    counts = np.bincount(ids.ravel(), minlength=k * samples.shape[0]).reshape(samples.shape[0], k)
    return counts / samples.shape[1]


def psi_interval(
    reference: np.ndarray, current: np.ndarray, edges: np.ndarray, *,
    n_resamples: int, confidence_level: float, seed: int,
) -> tuple[float | None, float | None]:
    """Bootstrap interval of the PSI: reference and current resampled independently
    (``scipy.stats.bootstrap``, percentile method, fixed seed), the bins kept fixed.

    PSI is never negative, so its resampled values sit above a true PSI near 0: read the interval
    as how much the figure moves with the sample, not as a test of "no shift".
    """
    reference, current = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    if n_resamples <= 0 or len(reference) < 2 or len(current) < 2:
        return None, None

    def statistic(ref, cur, axis=-1):
        ref, cur = np.moveaxis(ref, axis, -1), np.moveaxis(cur, axis, -1)
        shape = ref.shape[:-1]
        r = _batched_proportions(ref.reshape(-1, ref.shape[-1]), edges)
        c = _batched_proportions(cur.reshape(-1, cur.shape[-1]), edges)
        return psi_from_proportions(r, c).reshape(shape)

    with warnings.catch_warnings():  # a constant resampled PSI (identical samples) is fine here
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            (reference, current), statistic, paired=False, vectorized=True, n_resamples=n_resamples,
            confidence_level=confidence_level, method="percentile", batch=100, rng=np.random.default_rng(seed),
        )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        dist = np.asarray(result.bootstrap_distribution, dtype=float)
        alpha = (1 - confidence_level) / 2
        low, high = map(float, np.percentile(dist, [100 * alpha, 100 * (1 - alpha)]))
    return low, high


def compare_scores(
    reference: np.ndarray, current: np.ndarray, edges: np.ndarray, *,
    psi_moderate: float, psi_major: float, n_resamples: int, confidence_level: float, seed: int,
) -> Drift:
    """PSI (with its interval) and the KS test of ``current`` against ``reference`` on ``edges``."""
    reference, current = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    r, c = bin_counts(reference, edges), bin_counts(current, edges)
    value = float(psi_from_proportions(r / r.sum(), c / c.sum()))
    ks = stats.ks_2samp(reference, current)
    level = "major" if value > psi_major else "moderate" if value >= psi_moderate else "stable"
    return Drift(
        n_reference=len(reference), n_current=len(current), edges=tuple(map(float, edges)),
        reference_proportions=tuple(map(float, r / r.sum())), current_proportions=tuple(map(float, c / c.sum())),
        psi=value,
        psi_ci=psi_interval(reference, current, edges, n_resamples=n_resamples,
                            confidence_level=confidence_level, seed=seed),
        ks_statistic=float(ks.statistic), ks_p_value=float(ks.pvalue), level=level,
    )


BINNED_METHOD = (
    "reference as counts per bin and a CDF: PSI bootstrap resamples the reference as a multinomial of its N "
    "cases over its bins and the current scores with replacement; KS statistic of the current scores against "
    "the reference CDF (scipy.stats.kstest; the CDF is exact at the listed thresholds, linear between them), "
    "p-value from the two-sample distribution at the effective size n*N/(n+N) (scipy.stats.kstwo)"
)


def ks_against_cdf(current: np.ndarray, cdf, n_reference: int) -> tuple[float, float]:
    """(D, p) of the current scores against a reference known by its CDF and its size N.

    D is the one-sample statistic (``scipy.stats.kstest`` with the callable CDF); the reference is
    itself a sample of N, so the p-value is the two-sample one at the effective size n*N/(n+N)
    (``scipy.stats.kstwo``, as ``ks_2samp``'s asymptotic method), not the one-sample p-value that
    would treat the reference as exact. Where the CDF is interpolated between known points, D is
    an approximation there."""
    current = np.asarray(current, dtype=float)
    statistic = float(stats.kstest(current, cdf).statistic)
    n = len(current)
    effective = max(1, round(n * n_reference / (n + n_reference)))
    return statistic, float(min(1.0, stats.kstwo.sf(statistic, effective)))


def compare_binned(
    reference_counts: np.ndarray, current: np.ndarray, edges: np.ndarray, cdf, *,
    psi_moderate: float, psi_major: float, n_resamples: int, confidence_level: float, seed: int,
) -> Drift:
    """PSI (with its interval) and KS of ``current`` against a reference given as whole counts per
    bin on ``edges`` and its CDF (:func:`ks_against_cdf`).

    The interval reuses :func:`psi_interval` on bin indices: the reference becomes its N cases'
    bin indices (each index repeated by its count) and the current scores their bin indices, with
    edges halfway between indices. Resampling N of the reference's indices with replacement is
    drawing its bin counts from the multinomial of N over its proportions."""
    counts = np.asarray(reference_counts, dtype=int)
    current = np.asarray(current, dtype=float)
    n_reference = int(counts.sum())
    c = bin_counts(current, edges)
    r_prop, c_prop = counts / n_reference, c / c.sum()
    value = float(psi_from_proportions(r_prop, c_prop))
    ref_index = np.repeat(np.arange(len(counts)), counts).astype(float)
    cur_index = np.searchsorted(edges, current, side="right").astype(float)
    index_edges = np.arange(len(counts) - 1) + 0.5
    ks_statistic, ks_p = ks_against_cdf(current, cdf, n_reference)
    level = "major" if value > psi_major else "moderate" if value >= psi_moderate else "stable"
    return Drift(
        n_reference=n_reference, n_current=len(current), edges=tuple(map(float, edges)),
        reference_proportions=tuple(map(float, r_prop)), current_proportions=tuple(map(float, c_prop)), psi=value,
        psi_ci=psi_interval(ref_index, cur_index, index_edges, n_resamples=n_resamples,
                            confidence_level=confidence_level, seed=seed),
        ks_statistic=ks_statistic, ks_p_value=ks_p, level=level, method=BINNED_METHOD,
    )


def flag_rate_band(n_reference: int, flagged_reference: int, n_current: int, flagged_current: int,
                   confidence: float) -> FlagRateBand:
    """The reference flag rate's Wilson interval at the effective size of a difference of two
    proportions (1/n = 1/n_reference + 1/n_current), against the current rate."""
    reference_rate = flagged_reference / n_reference
    n_effective = 1.0 / (1.0 / n_reference + 1.0 / n_current)
    low, high = wilson_interval(reference_rate * n_effective, n_effective, confidence)
    current_rate = flagged_current / n_current
    return FlagRateBand(reference_rate=reference_rate, current_rate=current_rate, low=low, high=high,
                        confidence=confidence, outside=not low <= current_rate <= high)
