"""The reference of a model version read from its model card: the validation score distribution.

A card (``model_cards/<model>.json``, written by ``medassist audit``) stores the validation ROC
curve (``quantitative_analyses.evaluation.roc``: sklearn ``roc_curve``'s ``fpr``, ``tpr`` and
``thresholds``, thresholds above 1 clamped to 1) and the set's positives P and negatives N
(``quantitative_analyses.evaluation.overall``). At each listed threshold t,

    cases with score >= t  =  tpr(t) * P + fpr(t) * N,

so the card holds the validation scores' survival function exactly at those thresholds (also
where ``roc_curve`` dropped the intermediate points between them). From it:

* the PSI bins: edges chosen among the listed thresholds, about ``psi_bins`` bins of at least
  ``min_reference_per_bin`` validation cases each, and the exact number of validation cases per bin
  (:func:`card_bins`);
* the flag rate at the card's threshold: the evaluation's TP + FP over its cases;
* a piecewise-linear CDF between the listed thresholds, for the KS test (:func:`card_cdf`): exact
  at the thresholds, an approximation between them.

A card describes one model version (``model_details.name`` / ``.version``): a card of another
version is not a reference. A card whose evaluation is not per case (the tumour model's is per
2D slice, while triage scores whole series with the study rule) does not describe the scores the
monitor reads and is not used either; the per-version note says why.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medassist.errors import MedassistError

REPO_CARDS = Path(__file__).resolve().parents[2] / "model_cards"
CASE_UNIT = "case"  # the card's evaluation unit when it has no "unit" key: an image or a study
THRESHOLD_TOLERANCE = 1e-6  # cards round the threshold to 6 decimals


@dataclass(frozen=True)
class CardReference:
    """One model version's validation score distribution, as its card gives it.

    ``thresholds`` (increasing) and ``above`` (validation cases scoring >= each) are the survival
    function's exact points; ``edges`` the PSI bins' interior edges (bin i: edges[i-1] <= score <
    edges[i]) and ``counts`` the validation cases in each bin; ``n_flagged`` the cases at or above
    ``threshold`` (None when the card gives neither)."""

    card: str
    model: str
    version: str
    evaluation: str
    n: int
    n_positive: int
    n_negative: int
    threshold: float | None
    n_flagged: int | None
    edges: tuple[float, ...] | None
    counts: tuple[int, ...] | None
    thresholds: tuple[float, ...] = field(repr=False)
    above: tuple[int, ...] = field(repr=False)

    @property
    def flag_rate(self) -> float | None:
        return None if self.n_flagged is None else self.n_flagged / self.n


def card_path(cards_dir: Path, model: str) -> Path:
    """Where the card of ``model`` lies in ``cards_dir``."""
    return Path(cards_dir) / f"{model}.json"


def read_card(path: Path) -> dict:
    """A card's JSON; MedassistError naming the file when it cannot be read or is not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedassistError(f"{path}: not a readable model card ({exc})") from exc
    if not isinstance(data, dict):
        raise MedassistError(f"{path}: not a model card (expected a JSON object)")
    return data


def survival_points(roc: Mapping[str, Any], n_positive: int, n_negative: int) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds increasing, validation cases scoring >= each) from the ROC lists and P, N.

    Counts are rounded to whole cases (tpr * P and fpr * N are whole numbers up to float error).
    The clamped first threshold (sklearn's inf or max + 1, stored as 1.0) holds no case; where it
    coincides with a real threshold of 1.0, the real one (more cases) is kept."""
    fpr, tpr, thresholds = (np.asarray(roc.get(key, []), dtype=float) for key in ("fpr", "tpr", "thresholds"))
    if not (len(fpr) == len(tpr) == len(thresholds) >= 2):
        raise ValueError("the ROC lists are missing or of different lengths")
    if not (np.all(np.isfinite(fpr)) and np.all(np.isfinite(tpr)) and np.all(np.isfinite(thresholds))):
        raise ValueError("the ROC lists hold non-finite values")
    above = np.rint(tpr * n_positive + fpr * n_negative).astype(int)
    order = np.argsort(thresholds, kind="stable")
    t, a = thresholds[order], above[order]
    unique, first = np.unique(t, return_index=True)
    kept = np.maximum.reduceat(a, first)
    if np.any(np.diff(kept) > 0) or kept.min() < 0 or kept.max() > n_positive + n_negative:
        raise ValueError("the ROC lists do not give a survival function (cases above a threshold must not "
                         "grow with it)")
    return unique, kept


def card_bins(thresholds: np.ndarray, above: np.ndarray, n: int, n_bins: int,
              min_per_bin: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(interior edges, validation cases per bin) of the PSI bins, the edges among the listed
    thresholds; None when fewer than 2 bins of ``min_per_bin`` cases can be made.

    Target: k = min(n_bins, n // min_per_bin) bins of n / k cases (the quantile bins a sample of
    the scores would give); each target edge is the listed threshold nearest to it in cases, and
    while a bin holds fewer than ``min_per_bin`` cases it is merged with its smaller neighbour."""
    k = min(n_bins, n // max(min_per_bin, 1))
    if k < 2:
        return None
    thresholds, above = np.asarray(thresholds, dtype=float), np.asarray(above, dtype=int)
    inner = (above > 0) & (above < n)  # an edge with every case on one side makes an empty bin
    cand_t, cand_below = thresholds[inner], n - above[inner]
    if not len(cand_t):
        return None
    chosen = sorted({int(np.argmin(np.abs(cand_below - j * n / k))) for j in range(1, k)})
    edges, below = list(cand_t[chosen]), list(cand_below[chosen])
    while edges:
        counts = np.diff([0, *below, n])
        if counts.min() >= min_per_bin:
            return np.asarray(edges, dtype=float), counts.astype(int)
        i = int(np.argmin(counts))
        drop = 0 if i == 0 else i - 1 if i == len(counts) - 1 or counts[i - 1] <= counts[i + 1] else i
        del edges[drop], below[drop]
    return None


def card_cdf(thresholds: np.ndarray, above: np.ndarray, n: int) -> Callable[[np.ndarray], np.ndarray]:
    """The validation scores' CDF, F(x) = 1 - share scoring >= x: exact at the listed thresholds,
    linear between them, 0 below the lowest validation score and 1 above the top threshold."""
    x = np.asarray(thresholds, dtype=float)
    f = 1.0 - np.asarray(above, dtype=float) / n

    def cdf(values: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(values, dtype=float), x, f, left=0.0, right=1.0)

    return cdf


def card_quantiles(thresholds: np.ndarray, above: np.ndarray, n: int) -> dict[str, float]:
    """The 5-25-50-75-95th percentiles of the piecewise-linear CDF (approximate between thresholds)."""
    f = 1.0 - np.asarray(above, dtype=float) / n
    levels = {"p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95}
    return {name: float(np.interp(p, f, np.asarray(thresholds, dtype=float))) for name, p in levels.items()}


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value) if float(value).is_integer() and value >= 0 else None


def _flagged(overall: Mapping, thresholds: np.ndarray, above: np.ndarray) -> tuple[float | None, int | None]:
    """The card's threshold and the validation cases at or above it: TP + FP of the evaluation, else
    the survival function at that threshold when it is a listed one."""
    threshold = overall.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        return None, None
    tp, fp = _count(overall.get("tp")), _count(overall.get("fp"))
    if tp is not None and fp is not None:
        return float(threshold), tp + fp
    near = np.flatnonzero(np.abs(thresholds - threshold) <= THRESHOLD_TOLERANCE)
    return float(threshold), (int(above[near[-1]]) if len(near) else None)


def card_reference(card: Mapping[str, Any], path: Path, model: str, version: str, *, n_bins: int,
                   min_per_bin: int) -> tuple[CardReference | None, str]:
    """The card's reference for (model, version), or None with the reason it is not one."""
    details = card.get("model_details") or {}
    name, card_version = str(details.get("name", "")), str(details.get("version", ""))
    if name != model:
        return None, f"model card {path} describes {name or 'no model'}, not {model}: not used"
    if card_version != version:
        return None, (f"model card {path} is of {model} {card_version or '(no version)'}, not {version}: a card of "
                      "another version is not a reference for this one (a new version changes the scores)")
    evaluation = ((card.get("quantitative_analyses") or {}).get("evaluation")) or {}
    unit = str(evaluation.get("unit", CASE_UNIT))
    if unit != CASE_UNIT:
        return None, (f"model card {path} ({model} {version}): its validation scores are per {unit}, not per "
                      "scored series as in the worklist (the model scores a series with its study rule), so they "
                      "are not the distribution of these scores: not used")
    overall = evaluation.get("overall") or {}
    n_positive, n_negative = _count(overall.get("n_positive")), _count(overall.get("n_negative"))
    if n_positive is None or n_negative is None or n_positive + n_negative == 0:
        return None, f"model card {path} ({model} {version}) gives no numbers of positives and negatives: not used"
    try:
        thresholds, above = survival_points(evaluation.get("roc") or {}, n_positive, n_negative)
    except ValueError as exc:
        return None, f"model card {path} ({model} {version}): no usable ROC curve ({exc}): not used"
    n = n_positive + n_negative
    threshold, n_flagged = _flagged(overall, thresholds, above)
    bins = card_bins(thresholds, above, n, n_bins, min_per_bin)
    ref = CardReference(
        card=str(path), model=model, version=version, evaluation=str((card.get("evaluation_data") or {}).get("name", "")),
        n=n, n_positive=n_positive, n_negative=n_negative, threshold=threshold, n_flagged=n_flagged,
        edges=None if bins is None else tuple(map(float, bins[0])),
        counts=None if bins is None else tuple(map(int, bins[1])),
        thresholds=tuple(map(float, thresholds)), above=tuple(map(int, above)),
    )
    return ref, ""


def load_card_reference(cards_dir: Path, model: str, version: str, *, n_bins: int,
                        min_per_bin: int) -> tuple[CardReference | None, str]:
    """The reference of (model, version) from ``cards_dir/<model>.json``, or None and why not
    (no card, unreadable, another version, not per case, no ROC curve)."""
    path = card_path(cards_dir, model)
    if not path.is_file():
        return None, f"no model card {path}"
    try:
        card = read_card(path)
    except MedassistError as exc:
        return None, f"{exc}: not used"
    return card_reference(card, path, model, version, n_bins=n_bins, min_per_bin=min_per_bin)
