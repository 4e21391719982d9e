"""Binary classification metrics at a threshold, with bootstrap intervals, calibration and subgroups.

sklearn computes the metrics, scipy.stats.bootstrap the intervals.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats
from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score, roc_curve


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """AUROC plus sensitivity, specificity, PPV and NPV of ``score >= threshold``."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=float)
    predicted = (scores >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    ratio = lambda a, b: float(a / b) if b else float("nan")  # noqa: E731
    return {
        "n": int(len(labels)),
        "n_positive": int(labels.sum()),
        "auroc": float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else float("nan"),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "threshold": float(threshold),
    }


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 on these labels."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


def threshold_for_sensitivity(labels: np.ndarray, scores: np.ndarray, sensitivity: float) -> float:
    """The highest threshold whose sensitivity on these labels is at least ``sensitivity``.

    Every ROC point is kept (``drop_intermediate=False``): dropping collinear points can skip the
    exact one and return a lower threshold than needed."""
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    ok = np.flatnonzero(tpr >= sensitivity)
    return float(min(thresholds[ok[0]], 1.0))


# --- intervals, calibration, operating points, subgroups (the audit stage) -----------------------
#
# The functions above are used by training and keep their signatures. Below: the same metrics with
# 95% bootstrap intervals (scipy.stats.bootstrap, paired resampling of (label, score) pairs, fixed
# seed), calibration, operating points and subgroup analyses for the model cards.

METRIC_NAMES: tuple[str, ...] = ("auroc", "sensitivity", "specificity", "ppv", "npv")


def _metric_stack(labels: np.ndarray, scores: np.ndarray, threshold: float, axis: int = -1) -> np.ndarray:
    """AUROC, sensitivity, specificity, PPV, NPV along ``axis``, stacked on a new first axis.

    Vectorised so scipy.stats.bootstrap can evaluate all resamples in one call. AUROC is the
    Mann-Whitney form (mean rank of the positives, ties averaged), which equals sklearn's
    ``roc_auc_score``; undefined values (no positives in a resample, say) are NaN.
    """
    labels = np.moveaxis(np.asarray(labels), axis, -1) == 1
    scores = np.moveaxis(np.asarray(scores, dtype=float), axis, -1)
    predicted = scores >= threshold
    tp = np.sum(predicted & labels, axis=-1)
    fp = np.sum(predicted & ~labels, axis=-1)
    fn = np.sum(~predicted & labels, axis=-1)
    tn = np.sum(~predicted & ~labels, axis=-1)
    n_pos = tp + fn
    n_neg = tn + fp
    ranks = stats.rankdata(scores, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auroc = (np.sum(ranks * labels, axis=-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        return np.stack([auroc, tp / n_pos, tn / n_neg, tp / (tp + fp), tn / (tn + fn)]).astype(float)


def _json_float(value) -> float | None:
    """A float for JSON: NaN and infinities become None."""
    value = float(value)
    return value if np.isfinite(value) else None


def metrics_with_ci(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    *,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    method: str = "percentile",
    seed: int = 0,
) -> dict:
    """``binary_metrics`` plus confusion counts and a bootstrap confidence interval per metric.

    Intervals come from ``scipy.stats.bootstrap`` resampling (label, score) pairs together
    (``paired=True``) with a fixed seed. A resample in which a metric is undefined (no positives,
    say) is left out of that metric's percentile interval (``np.nanpercentile`` of scipy's
    bootstrap distribution) and counted in ``ci_undefined_resamples``; with no defined resample or
    fewer than two cases the interval is (None, None). Values that are NaN become None so the
    result serialises to strict JSON.
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=float)
    if len(labels) == 0:
        raise ValueError("no cases to compute metrics on")
    point = binary_metrics(labels, scores, threshold)
    tn, fp, fn, tp = confusion_matrix(labels, (scores >= threshold).astype(int), labels=[0, 1]).ravel()
    out: dict = {"n": int(point["n"]), "n_positive": int(point["n_positive"]),
                 "n_negative": int(point["n"] - point["n_positive"]), "threshold": float(threshold),
                 "tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn)}
    out.update({k: _json_float(point[k]) for k in METRIC_NAMES})
    ci: dict[str, list[float | None]] = {k: [None, None] for k in METRIC_NAMES}
    undefined = {k: 0 for k in METRIC_NAMES}
    if len(labels) >= 2 and n_resamples > 0:
        with warnings.catch_warnings():  # undefined resamples are handled below
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            res = stats.bootstrap(
                (labels, scores),
                lambda y, s, axis=-1: _metric_stack(y, s, threshold, axis=axis),
                paired=True,
                vectorized=True,
                n_resamples=n_resamples,
                confidence_level=confidence_level,
                method=method,
                rng=np.random.default_rng(seed),
            )
        dist = np.asarray(res.bootstrap_distribution)
        low, high = np.asarray(res.confidence_interval.low), np.asarray(res.confidence_interval.high)
        alpha = (1 - confidence_level) / 2
        for i, name in enumerate(METRIC_NAMES):
            if out[name] is None:
                continue
            finite = np.isfinite(dist[i])
            undefined[name] = int((~finite).sum())
            if np.isfinite(low[i]) and np.isfinite(high[i]):
                ci[name] = [float(low[i]), float(high[i])]
            elif finite.any():  # some resamples undefined: scipy gives NaN; use the defined ones
                lo, hi = np.percentile(dist[i][finite], [100 * alpha, 100 * (1 - alpha)])
                ci[name] = [float(lo), float(hi)]
    out["ci"] = ci
    out["ci_undefined_resamples"] = undefined
    return out


def bootstrap_settings(*, n_resamples: int, confidence_level: float, method: str, seed: int) -> dict:
    """How the intervals were computed, for the card."""
    return {
        "library": "scipy.stats.bootstrap",
        "paired": True,
        "method": method,
        "n_resamples": int(n_resamples),
        "confidence_level": float(confidence_level),
        "seed": int(seed),
    }


def calibration(labels: np.ndarray, scores: np.ndarray, n_bins: int = 10) -> dict:
    """Expected calibration error (equal-width bins), Brier score and the reliability-diagram bins.

    Bins and per-bin means are sklearn's ``calibration_curve(strategy="uniform")``; the counts use
    the same bin assignment. ECE = sum over non-empty bins of (n_bin / n) * |observed - predicted|.
    """
    from sklearn.calibration import calibration_curve  # heavier import: only where needed

    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=float)
    if len(labels) == 0:
        return {"n_bins": n_bins, "ece": None, "brier": None, "bins": []}
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_ids = np.searchsorted(edges[1:-1], scores)  # sklearn's assignment
    counts = np.bincount(bin_ids, minlength=n_bins)
    observed, predicted = calibration_curve(labels, scores, n_bins=n_bins, strategy="uniform")
    nonzero = np.flatnonzero(counts)
    ece = float(np.sum(counts[nonzero] / len(labels) * np.abs(observed - predicted)))
    bins = [
        {"lower": float(edges[b]), "upper": float(edges[b + 1]), "n": int(counts[b]),
         "mean_score": float(p), "observed_rate": float(o)}
        for b, o, p in zip(nonzero, observed, predicted)
    ]
    return {"n_bins": n_bins, "strategy": "uniform", "ece": ece,
            "brier": float(brier_score_loss(labels, scores, pos_label=1)), "bins": bins}


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of the proportion ``successes / n`` (n may be fractional: an
    effective sample size); (nan, nan) for n == 0."""
    if n <= 0:
        return (float("nan"), float("nan"))
    rate = successes / n
    z = float(stats.norm.ppf(1 - (1 - confidence) / 2))
    denominator = 1 + z * z / n
    centre = (rate + z * z / (2 * n)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def roc_points(labels: np.ndarray, scores: np.ndarray) -> dict:
    """The ROC curve (sklearn ``roc_curve``), thresholds above 1 clamped for JSON."""
    labels = np.asarray(labels).astype(int)
    if not 0 < labels.sum() < len(labels):
        return {"fpr": [], "tpr": [], "thresholds": []}
    fpr, tpr, thresholds = roc_curve(labels, scores)
    return {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr],
            "thresholds": [float(min(t, 1.0)) for t in thresholds]}


def operating_points(
    labels: np.ndarray, scores: np.ndarray, targets: tuple[float, ...] = (0.90, 0.95, 0.99)
) -> list[dict]:
    """For each target sensitivity: the highest threshold reaching it, and the metrics there."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=float)
    if not 0 < labels.sum() < len(labels):
        return []
    points = []
    for target in targets:
        threshold = threshold_for_sensitivity(labels, scores, target)
        m = binary_metrics(labels, scores, threshold)
        points.append({"target_sensitivity": float(target), "threshold": threshold,
                       **{k: _json_float(m[k]) for k in ("sensitivity", "specificity", "ppv", "npv")}})
    return points


def subgroup_analysis(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    factors: dict[str, list[str]],
    overall: dict,
    *,
    min_positives: int = 5,
    **bootstrap_kwargs,
) -> tuple[dict[str, list[dict]], list[dict]]:
    """Metrics with intervals for every level of every factor, and the warnings they raise.

    Warnings: a level with fewer than ``min_positives`` positives (or negatives) is too small to
    say anything about sensitivity (specificity); otherwise a level whose sensitivity (specificity)
    interval lies entirely below the overall point estimate (upper bound < overall) is flagged.
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=float)
    results: dict[str, list[dict]] = {}
    raised: list[dict] = []
    for factor, values in factors.items():
        values = np.asarray([str(v) if str(v) else "unknown" for v in values])
        levels = sorted(set(values), key=lambda v: (-int((values == v).sum()), v))
        rows = []
        for level in levels:
            mask = values == level
            m = metrics_with_ci(labels[mask], scores[mask], threshold, **bootstrap_kwargs)
            m = {"factor": factor, "level": level, **m, "warnings": []}
            checks = (("sensitivity", "n_positive", "positive"), ("specificity", "n_negative", "negative"))
            for metric, count_key, noun in checks:
                if m[count_key] < min_positives:
                    m["warnings"].append({
                        "kind": f"too_few_{noun}s",
                        "message": f"{m[count_key]} {noun} case(s) (< {min_positives}): too few to estimate {metric}",
                    })
                    continue
                upper, reference = m["ci"][metric][1], overall.get(metric)
                if upper is not None and reference is not None and upper < reference:
                    m["warnings"].append({
                        "kind": f"low_{metric}",
                        "message": (f"{metric} {m[metric]:.3f} (95% CI {m['ci'][metric][0]:.3f}-{upper:.3f}) "
                                    f"is below the overall {reference:.3f} by more than its interval"),
                    })
            for w in m["warnings"]:
                raised.append({"factor": factor, "level": level, **w})
            rows.append(m)
        results[factor] = rows
    return results, raised


def categorical_accuracy_with_ci(
    true: np.ndarray,
    predicted: np.ndarray,
    class_names: tuple[str, ...] | list[str],
    *,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    method: str = "percentile",
    seed: int = 0,
) -> dict:
    """Accuracy of a categorical output (class indices) with a bootstrap interval, the confusion
    matrix (rows: true class, columns: predicted) and each class's recall and precision.

    The interval resamples cases (``scipy.stats.bootstrap`` of the mean of correct answers, fixed
    seed); with fewer than two cases, or all answers alike (no variation to resample), it is
    (None, None) unless every resample gives the same value, which is then the interval.
    """
    true = np.asarray(true).astype(int)
    predicted = np.asarray(predicted).astype(int)
    k = len(class_names)
    if true.shape != predicted.shape:
        raise ValueError("true and predicted classes differ in length")
    n = len(true)
    confusion = confusion_matrix(true, predicted, labels=list(range(k))) if n else np.zeros((k, k), int)
    correct = (true == predicted).astype(float)
    accuracy = float(correct.mean()) if n else float("nan")
    ci: list[float | None] = [None, None]
    if n >= 2 and n_resamples > 0:
        if np.ptp(correct) == 0:
            ci = [accuracy, accuracy]
        else:
            res = stats.bootstrap((correct,), np.mean, vectorized=True, n_resamples=n_resamples,
                                  confidence_level=confidence_level, method=method, rng=np.random.default_rng(seed))
            ci = [float(res.confidence_interval.low), float(res.confidence_interval.high)]
    per_class = []
    for i, name in enumerate(class_names):
        n_true, n_pred = int(confusion[i].sum()), int(confusion[:, i].sum())
        per_class.append({"class": str(name), "n": n_true, "n_predicted": n_pred,
                          "recall": _json_float(confusion[i, i] / n_true) if n_true else None,
                          "precision": _json_float(confusion[i, i] / n_pred) if n_pred else None})
    return {"n": int(n), "n_correct": int(correct.sum()), "accuracy": _json_float(accuracy), "ci": ci,
            "labels": [str(c) for c in class_names], "confusion_rows_true": confusion.astype(int).tolist(),
            "per_class": per_class}
