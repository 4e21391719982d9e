"""Metrics with bootstrap intervals, calibration, operating points and subgroup warnings."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from audit_helpers import synthetic_scored_set
from sklearn.metrics import confusion_matrix, precision_score, recall_score, roc_auc_score, roc_curve

from medassist import metrics as M


def test_training_api_is_unchanged():
    assert list(inspect.signature(M.binary_metrics).parameters) == ["labels", "scores", "threshold"]
    assert list(inspect.signature(M.youden_threshold).parameters) == ["labels", "scores"]
    assert list(inspect.signature(M.threshold_for_sensitivity).parameters) == ["labels", "scores", "sensitivity"]


def _sklearn_metrics(labels, scores, threshold):
    pred = (scores >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, pred, labels=[0, 1]).ravel()
    return {"auroc": roc_auc_score(labels, scores), "sensitivity": recall_score(labels, pred),
            "specificity": tn / (tn + fp), "ppv": precision_score(labels, pred), "npv": tn / (tn + fn)}


def test_point_estimates_match_sklearn_and_intervals_contain_them():
    data = synthetic_scored_set(300)
    out = M.metrics_with_ci(data["labels"], data["scores"], 0.5, n_resamples=300, seed=1)
    expected = _sklearn_metrics(data["labels"], data["scores"], 0.5)
    for name, value in expected.items():
        assert out[name] == pytest.approx(value, abs=1e-12)
        low, high = out["ci"][name]
        assert low <= out[name] <= high, name
        assert 0.0 <= low < high <= 1.0
    assert out["n"] == 300 and out["n_positive"] == int(data["labels"].sum())
    assert out["tp"] + out["fn"] == out["n_positive"]
    # fixed seed: identical intervals on a rerun, different with another seed
    again = M.metrics_with_ci(data["labels"], data["scores"], 0.5, n_resamples=300, seed=1)
    assert again["ci"] == out["ci"]
    other = M.metrics_with_ci(data["labels"], data["scores"], 0.5, n_resamples=300, seed=2)
    assert other["ci"] != out["ci"]


def test_vectorised_statistic_equals_sklearn_with_ties():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200), 1)  # many ties
    stack = M._metric_stack(labels, scores, 0.5)
    reference = M.binary_metrics(labels, scores, 0.5)
    assert stack == pytest.approx([reference[k] for k in M.METRIC_NAMES])
    batch = M._metric_stack(np.stack([labels, labels[::-1]]), np.stack([scores, scores[::-1]]), 0.5)
    assert batch.shape == (5, 2)
    assert batch[:, 0] == pytest.approx(stack)


def test_bca_method_also_works():
    data = synthetic_scored_set(200)
    out = M.metrics_with_ci(data["labels"], data["scores"], 0.5, n_resamples=200, method="BCa")
    for name in M.METRIC_NAMES:
        low, high = out["ci"][name]
        assert low <= out[name] <= high


def test_resamples_without_positives_are_left_out():
    labels = np.array([1, 0, 0, 0, 0, 0, 1, 0])
    scores = np.linspace(0.1, 0.9, 8)
    out = M.metrics_with_ci(labels, scores, 0.5, n_resamples=200)
    assert out["ci_undefined_resamples"]["sensitivity"] > 0
    low, high = out["ci"]["sensitivity"]
    assert low is not None and 0.0 <= low <= out["sensitivity"] <= high <= 1.0


def test_single_class_gives_undefined_not_nan():
    out = M.metrics_with_ci(np.zeros(10, int), np.linspace(0, 1, 10), 0.5, n_resamples=50)
    assert out["auroc"] is None and out["sensitivity"] is None and out["ci"]["sensitivity"] == [None, None]
    assert out["specificity"] == pytest.approx(0.5)


def test_expected_calibration_error_matches_a_recomputation():
    data = synthetic_scored_set(500)
    labels, scores = data["labels"], data["scores"]
    calib = M.calibration(labels, scores, n_bins=10)
    ece = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        inside = (scores > lo) & (scores <= hi) if b else (scores <= hi)
        if inside.any():
            ece += inside.mean() * abs(labels[inside].mean() - scores[inside].mean())
    assert calib["ece"] == pytest.approx(ece, abs=1e-12)
    assert sum(b["n"] for b in calib["bins"]) == len(labels)
    assert calib["brier"] == pytest.approx(np.mean((scores - labels) ** 2))


def test_perfectly_calibrated_scores_have_zero_ece():
    scores = np.repeat([0.05, 0.25, 0.55, 0.85], 20)
    labels = np.concatenate([np.r_[np.ones(1), np.zeros(19)], np.r_[np.ones(5), np.zeros(15)],
                             np.r_[np.ones(11), np.zeros(9)], np.r_[np.ones(17), np.zeros(3)]]).astype(int)
    assert M.calibration(labels, scores)["ece"] == pytest.approx(0.0, abs=1e-12)


def test_operating_points_reach_their_targets():
    data = synthetic_scored_set(400)
    labels, scores = data["labels"], data["scores"]
    points = M.operating_points(labels, scores, (0.9, 0.95, 0.99))
    assert [p["target_sensitivity"] for p in points] == [0.9, 0.95, 0.99]
    fpr, tpr, thresholds = roc_curve(labels, scores)
    for p in points:
        ref = M.binary_metrics(labels, scores, p["threshold"])
        assert p["sensitivity"] >= p["target_sensitivity"]
        assert p["specificity"] == pytest.approx(ref["specificity"])
        # the highest such threshold: any higher ROC threshold misses the target
        higher = thresholds[(thresholds > p["threshold"]) & np.isfinite(thresholds)]
        assert all(tpr[list(thresholds).index(t)] < p["target_sensitivity"] for t in higher)
    assert points[0]["threshold"] >= points[1]["threshold"] >= points[2]["threshold"]


def test_subgroup_warning_on_a_biased_subgroup_and_small_subgroups():
    data = synthetic_scored_set(400)
    overall = M.metrics_with_ci(data["labels"], data["scores"], 0.5, n_resamples=200)
    groups, warnings = M.subgroup_analysis(
        data["labels"], data["scores"], 0.5, {"body_region": list(data["region"]), "view": list(data["view"])},
        overall, n_resamples=200)
    kinds = {(w["factor"], w["level"], w["kind"]) for w in warnings}
    assert ("body_region", "hip", "low_sensitivity") in kinds
    assert not any(level in ("hand", "leg") and kind == "low_sensitivity" for _, level, kind in kinds)
    assert ("view", "oblique", "too_few_positives") in kinds
    hip = next(r for r in groups["body_region"] if r["level"] == "hip")
    assert hip["ci"]["sensitivity"][1] < overall["sensitivity"]
    # each level's numbers are the metrics of its own cases
    mask = data["region"] == "hip"
    assert hip["sensitivity"] == pytest.approx(recall_score(data["labels"][mask], data["scores"][mask] >= 0.5))
    assert sum(r["n"] for r in groups["body_region"]) == 400


def test_no_warning_on_exchangeable_subgroups():
    rng = np.random.default_rng(5)
    labels = (rng.random(600) < 0.4).astype(int)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.15), 0, 1)
    overall = M.metrics_with_ci(labels, scores, 0.5, n_resamples=200)
    _, warnings = M.subgroup_analysis(labels, scores, 0.5, {"site": list(rng.choice(["a", "b"], 600))}, overall,
                                      n_resamples=200)
    assert warnings == []


def test_threshold_for_sensitivity_is_the_exact_highest_one_even_on_collinear_roc_points():
    from medassist.metrics import threshold_for_sensitivity

    # ten positives in a row above every negative: the ROC points between are collinear
    scores = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.2, 0.1])
    labels = np.array([1] * 10 + [0, 0])
    assert threshold_for_sensitivity(labels, scores, 0.8) == pytest.approx(0.6)  # 8 of 10 positives, no lower
