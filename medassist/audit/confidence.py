"""How sure a finding is: among validation cases that scored like it, how many had the finding.

A model's raw score is not a probability a reader can use. At the end of training (or after it,
``scripts/confidence_tables.py``) the validation scores are cut into bins of about equal counts;
each bin keeps its cases and positives. A new finding's score falls in one bin, and the reader
sees "k of n validation images scoring 0.62-0.71 had a fracture (58%, 95% CI 45-70%)": the bin's
positive rate is a histogram-binning calibrated probability, its Wilson interval how sure that
estimate is. Both hold at the validation set's prevalence and source, which the text names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medassist.metrics import wilson_interval


@dataclass(frozen=True)
class ScoreBin:
    """Validation cases with ``lower <= score < upper`` (the last bin includes 1.0)."""

    lower: float
    upper: float
    n: int
    n_positive: int


@dataclass(frozen=True)
class FindingConfidence:
    """One finding's score placed in its validation bin."""

    score: float
    bin: ScoreBin
    rate: float
    ci: tuple[float, float]
    unit: str
    source: str
    prevalence: float

    def describe(self, finding: str) -> str:
        """One sentence for a reader."""
        b = self.bin
        units = "studies" if self.unit == "study" else f"{self.unit}s"
        return (f"{b.n_positive} of {b.n} {units} of {self.source} scoring {b.lower:.2f}-{b.upper:.2f} had "
                f"{finding.replace('_', ' ')} ({self.rate:.0%}, 95% CI {self.ci[0]:.0%}-{self.ci[1]:.0%}; "
                f"{self.prevalence:.0%} of that set had it)")


@dataclass(frozen=True)
class ConfidenceTable:
    """The validation bins of one model version (``unit``: image, slice or study)."""

    unit: str
    source: str
    prevalence: float
    bins: tuple[ScoreBin, ...]

    @classmethod
    def from_scores(cls, labels: Sequence[int], scores: Sequence[float], *, unit: str, source: str,
                    n_bins: int = 10, min_cases: int = 20) -> "ConfidenceTable":
        """Bins at the score quantiles (about equal counts), neighbours merged until each holds at
        least ``min_cases`` cases."""
        y = np.asarray(labels).astype(int)
        s = np.clip(np.asarray(scores, dtype=float), 0.0, 1.0)
        if len(y) == 0 or len(y) != len(s):
            raise ValueError(f"need as many labels as scores, at least one ({len(y)} and {len(s)})")
        inner = np.unique(np.quantile(s, np.linspace(0, 1, n_bins + 1)[1:-1]))
        edges = [0.0, *[float(e) for e in inner if 0.0 < e < 1.0], 1.0]
        bins: list[ScoreBin] = []
        for lower, upper in zip(edges[:-1], edges[1:]):
            inside = (s >= lower) & ((s < upper) if upper < 1.0 else (s <= upper))
            new = ScoreBin(lower, upper, int(inside.sum()), int(y[inside].sum()))
            if bins and bins[-1].n < min_cases:
                last = bins.pop()
                new = ScoreBin(last.lower, upper, last.n + new.n, last.n_positive + new.n_positive)
            bins.append(new)
        if len(bins) > 1 and bins[-1].n < min_cases:  # the top bin too small: into its neighbour
            top, below = bins.pop(), bins.pop()
            bins.append(ScoreBin(below.lower, top.upper, below.n + top.n, below.n_positive + top.n_positive))
        return cls(unit=unit, source=source, prevalence=float(y.mean()), bins=tuple(bins))

    def at(self, score: float) -> FindingConfidence | None:
        """The bin of ``score`` with its positive rate and interval; None for a non-finite score."""
        if score is None or not np.isfinite(score):
            return None
        score = float(np.clip(score, 0.0, 1.0))
        found = next((b for b in self.bins if score < b.upper), self.bins[-1])
        rate = found.n_positive / found.n if found.n else float("nan")
        return FindingConfidence(score=score, bin=found, rate=rate, ci=wilson_interval(found.n_positive, found.n),
                                 unit=self.unit, source=self.source, prevalence=self.prevalence)

    def to_dict(self) -> dict:
        return {"unit": self.unit, "source": self.source, "prevalence": self.prevalence,
                "bins": [[b.lower, b.upper, b.n, b.n_positive] for b in self.bins]}

    @classmethod
    def from_dict(cls, data: Mapping | None) -> "ConfidenceTable | None":
        """The table stored in a spec's ``validation["confidence"]``; None when there is none."""
        if not data or not data.get("bins"):
            return None
        return cls(unit=str(data["unit"]), source=str(data["source"]), prevalence=float(data["prevalence"]),
                   bins=tuple(ScoreBin(float(lo), float(hi), int(n), int(k)) for lo, hi, n, k in data["bins"]))
