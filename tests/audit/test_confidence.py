"""audit.confidence: validation bins that tell a reader how often a score like this one was right."""

from __future__ import annotations

import numpy as np
import pytest

from medassist.audit.confidence import ConfidenceTable


def _table(n=400, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    scores = rng.random(n)
    labels = (rng.random(n) < scores).astype(int)  # calibrated by construction
    return ConfidenceTable.from_scores(labels, scores, unit="image", source="a test split", **kwargs), labels, scores


def test_bins_cover_every_case_and_rise_with_the_score():
    table, labels, _ = _table()
    assert sum(b.n for b in table.bins) == len(labels)
    assert sum(b.n_positive for b in table.bins) == labels.sum()
    assert table.bins[0].lower == 0.0 and table.bins[-1].upper == 1.0
    rates = [b.n_positive / b.n for b in table.bins]
    assert rates[0] < 0.25 and rates[-1] > 0.75  # low scores rarely positive, high scores mostly
    assert table.prevalence == pytest.approx(labels.mean())


def test_a_score_lands_in_its_bin_with_a_wilson_interval_and_a_sentence():
    table, _, _ = _table()
    high = table.at(0.97)
    assert high.bin is table.bins[-1] and high.ci[0] < high.rate < high.ci[1]
    assert table.at(0.0).bin is table.bins[0] and table.at(1.0).bin is table.bins[-1]
    assert table.at(float("nan")) is None
    text = high.describe("fracture")
    assert f"of {high.bin.n} images of a test split" in text and "had fracture" in text and "95% CI" in text


def test_small_bins_are_merged_and_the_table_round_trips_through_its_dict():
    table, _, _ = _table(n=45, n_bins=10, min_cases=20)
    assert all(b.n >= 20 for b in table.bins) and len(table.bins) == 2
    assert ConfidenceTable.from_dict(table.to_dict()) == table
    assert ConfidenceTable.from_dict(None) is None and ConfidenceTable.from_dict({"bins": []}) is None
    tied = ConfidenceTable.from_scores([0, 1, 1], [0.5, 0.5, 0.5], unit="study", source="x", min_cases=1)
    assert sum(b.n for b in tied.bins) == 3

