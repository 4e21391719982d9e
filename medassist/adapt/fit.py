"""Fitting the threshold on the fit set, and the protocol's acceptance criteria on the locked set.

Every figure is computed on reviewed cases (the reviewer's final call against ``score >= threshold``);
intervals are Wilson score intervals (``medassist.metrics.wilson_interval``). The threshold is
the highest one whose sensitivity on the fit set reaches the protocol's target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from medassist.adapt.data import Case, ReviewedCases
from medassist.adapt.protocol import Protocol
from medassist.metrics import threshold_for_sensitivity, wilson_interval


@dataclass(frozen=True)
class SetMetrics:
    """Sensitivity and specificity of ``score >= threshold`` on a set of reviewed cases, with Wilson intervals."""

    threshold: float
    n: int
    n_positive: int
    n_negative: int
    tp: int
    fn: int
    tn: int
    fp: int
    sensitivity: float | None
    sensitivity_ci: tuple[float | None, float | None]
    specificity: float | None
    specificity_ci: tuple[float | None, float | None]
    confidence: float

    def to_dict(self) -> dict:
        out = asdict(self)
        out["sensitivity_ci"], out["specificity_ci"] = list(self.sensitivity_ci), list(self.specificity_ci)
        return out


@dataclass(frozen=True)
class ThresholdFit:
    """The threshold fitted on the fit set, and the fit set's figures at it and at the released one."""

    method: str
    target_sensitivity: float
    released_threshold: float
    threshold: float
    at_threshold: SetMetrics
    at_released: SetMetrics

    def to_dict(self) -> dict:
        return {"method": self.method, "target_sensitivity": self.target_sensitivity,
                "released_threshold": self.released_threshold, "threshold": self.threshold,
                "fit_set_at_threshold": self.at_threshold.to_dict(),
                "fit_set_at_released_threshold": self.at_released.to_dict()}


@dataclass(frozen=True)
class Criterion:
    """One acceptance criterion: what was measured, the limit, and whether it holds."""

    name: str
    passed: bool
    measured: float | None
    limit: float | None
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Acceptance:
    """The released and the adapted model on the locked set, and the protocol's verdict."""

    released: SetMetrics
    adapted: SetMetrics
    criteria: tuple[Criterion, ...]

    @property
    def accepted(self) -> bool:
        return all(c.passed for c in self.criteria)

    @property
    def failed(self) -> tuple[Criterion, ...]:
        return tuple(c for c in self.criteria if not c.passed)

    def to_dict(self) -> dict:
        return {"accepted": self.accepted, "locked_set_released": self.released.to_dict(),
                "locked_set_adapted": self.adapted.to_dict(), "criteria": [c.to_dict() for c in self.criteria]}


def _ratio_ci(k: int, n: int, confidence: float) -> tuple[float | None, tuple[float | None, float | None]]:
    if n == 0:
        return None, (None, None)
    low, high = wilson_interval(k, n, confidence)
    return k / n, (float(low), float(high))


def _arrays(cases: Sequence[Case]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([c.positive for c in cases], dtype=bool), np.array([c.score for c in cases], dtype=float))


def metrics_at(cases: Sequence[Case], threshold: float, confidence: float) -> SetMetrics:
    """Sensitivity and specificity of ``score >= threshold`` against the reviewers' calls."""
    labels, scores = _arrays(cases)
    flagged = scores >= threshold
    tp, fn = int(np.sum(flagged & labels)), int(np.sum(~flagged & labels))
    tn, fp = int(np.sum(~flagged & ~labels)), int(np.sum(flagged & ~labels))
    sens, sens_ci = _ratio_ci(tp, tp + fn, confidence)
    spec, spec_ci = _ratio_ci(tn, tn + fp, confidence)
    return SetMetrics(threshold=float(threshold), n=len(cases), n_positive=tp + fn, n_negative=tn + fp, tp=tp, fn=fn,
                      tn=tn, fp=fp, sensitivity=sens, sensitivity_ci=sens_ci, specificity=spec,
                      specificity_ci=spec_ci, confidence=confidence)


def too_few(cases: ReviewedCases, protocol: Protocol) -> list[Criterion]:
    """The minimum counts of the protocol that these cases miss (empty: enough to fit)."""
    counts = cases.counts()
    fit = counts["fit"]
    checks = [
        ("min_reviewed", counts["all"]["n"], protocol.min_reviewed, "reviewed findings"),
        ("min_positives", counts["all"]["n_positive"], protocol.min_positives, "reviewed positives"),
        ("min_negatives", counts["all"]["n_negative"], protocol.min_negatives, "reviewed negatives"),
        ("min_locked_positives", counts["locked"]["n_positive"], protocol.min_locked_positives,
         "positives in the locked set"),
        ("min_locked_negatives", counts["locked"]["n_negative"], protocol.min_locked_negatives,
         "negatives in the locked set"),
        ("fit_positives", fit["n_positive"], 1, "positives in the fit set"),
        ("fit_negatives", fit["n_negative"], 1, "negatives in the fit set"),
    ]
    return [Criterion(name, False, float(have), float(need), f"{have} {what}, at least {need} needed")
            for name, have, need, what in checks if have < need]


def fit_threshold(cases: Sequence[Case], released_threshold: float, protocol: Protocol) -> ThresholdFit:
    """The highest threshold whose sensitivity on ``cases`` (the fit set) reaches the protocol's target."""
    labels, scores = _arrays(cases)
    threshold = threshold_for_sensitivity(labels.astype(int), scores, protocol.target_sensitivity)
    threshold = math.floor(threshold * 1e6) / 1e6  # 6 decimals, rounded down: no positive is lost
    return ThresholdFit(
        method="target_sensitivity", target_sensitivity=protocol.target_sensitivity,
        released_threshold=float(released_threshold), threshold=threshold,
        at_threshold=metrics_at(cases, threshold, protocol.confidence),
        at_released=metrics_at(cases, released_threshold, protocol.confidence),
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def evaluate(locked: Sequence[Case], fit: ThresholdFit, protocol: Protocol) -> Acceptance:
    """The protocol's criteria: the threshold's range, then sensitivity and specificity on the locked set."""
    released = metrics_at(locked, fit.released_threshold, protocol.confidence)
    adapted = metrics_at(locked, fit.threshold, protocol.confidence)
    change = abs(fit.threshold - fit.released_threshold)
    in_bounds = protocol.threshold_min <= fit.threshold <= protocol.threshold_max
    criteria = [
        Criterion("max_threshold_change", change <= protocol.max_threshold_change + 1e-12, change,
                  protocol.max_threshold_change,
                  f"threshold {fit.released_threshold:.4f} -> {fit.threshold:.4f}: moved {change:.4f}, at most "
                  f"{protocol.max_threshold_change:g} allowed"),
        Criterion("threshold_range", in_bounds, fit.threshold, None,
                  f"threshold {fit.threshold:.4f}, allowed {protocol.threshold_min:g}..{protocol.threshold_max:g}"),
    ]
    sens_low, rel_low = adapted.sensitivity_ci[0], released.sensitivity_ci[0]
    sens_limit = None if rel_low is None else rel_low - protocol.sensitivity_margin
    criteria.append(Criterion(
        "sensitivity_lower_bound", sens_low is not None and sens_limit is not None and sens_low >= sens_limit - 1e-12,
        sens_low, sens_limit,
        f"locked set ({adapted.n_positive} positives): adapted sensitivity {_fmt(adapted.sensitivity)}, "
        f"{protocol.confidence:.0%} Wilson lower bound {_fmt(sens_low)}; released {_fmt(released.sensitivity)}, "
        f"lower bound {_fmt(rel_low)}, minus margin {protocol.sensitivity_margin:g} = {_fmt(sens_limit)}",
    ))
    spec, rel_spec = adapted.specificity, released.specificity
    spec_limit = None if rel_spec is None else rel_spec - protocol.specificity_margin
    criteria.append(Criterion(
        "specificity_margin", spec is not None and spec_limit is not None and spec >= spec_limit - 1e-12,
        spec, spec_limit,
        f"locked set ({adapted.n_negative} negatives): adapted specificity {_fmt(spec)}, released "
        f"{_fmt(rel_spec)} minus margin {protocol.specificity_margin:g} = {_fmt(spec_limit)}",
    ))
    return Acceptance(released=released, adapted=adapted, criteria=tuple(criteria))
