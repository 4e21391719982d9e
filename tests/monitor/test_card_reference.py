"""The default reference: a model card's validation score distribution, rebuilt from its ROC curve.

The synthetic cards are written the way ``medassist audit`` writes them: the ROC lists from
``medassist.metrics.roc_points`` (sklearn ``roc_curve``, ``drop_intermediate=True``,
thresholds clamped to 1) and the evaluation's counts at the threshold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medassist.metrics import roc_points
from medassist.errors import MedassistError
from medassist.monitor import drift as D
from medassist.monitor.card_reference import card_bins, card_cdf, load_card_reference, survival_points
from medassist.monitor.run import NO_REFERENCE, run_monitor

MODEL, VERSION, THRESHOLD = "fracture_xray", "1.1.0", 0.5  # as tests/monitor/conftest.py writes them


def validation_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores like the runs' (Beta(2, 5), 6 decimals as in a worklist) with labels drawn from them."""
    rng = np.random.default_rng(seed)
    scores = np.round(rng.beta(2, 5, n), 6)
    return scores, (rng.random(n) < scores).astype(int)


def write_card(folder: Path, scores: np.ndarray, labels: np.ndarray, *, model: str = MODEL, version: str = VERSION,
               threshold: float = THRESHOLD, unit: str | None = None) -> Path:
    """A model card JSON holding what the monitor reads from one."""
    flagged = scores >= threshold
    overall = {"n": len(scores), "n_positive": int(labels.sum()), "n_negative": int((1 - labels).sum()),
               "threshold": threshold, "tp": int(np.sum(flagged & (labels == 1))),
               "fp": int(np.sum(flagged & (labels == 0)))}
    evaluation = {"threshold": threshold, "overall": overall, "roc": roc_points(labels, scores)}
    if unit is not None:
        evaluation["unit"] = unit
    card = {"schema": "medassist-model-card/1", "model_details": {"name": model, "version": version,
                                                                   "threshold": threshold},
            "evaluation_data": {"name": "synthetic validation set"},
            "quantitative_analyses": {"evaluation": evaluation}}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{model}.json"
    path.write_text(json.dumps(card))
    return path


@pytest.fixture(scope="module")
def validation():
    return validation_set(600, seed=1)


@pytest.fixture
def cards(tmp_path, validation):
    folder = tmp_path / "cards"
    write_card(folder, *validation)
    return folder


def _monitor(tmp_path, runs, **kwargs) -> dict:
    out = tmp_path / "report"
    run_monitor(runs, out, **kwargs)
    return json.loads((out / "monitor.json").read_text())


def _model(report: dict, version: str = VERSION) -> dict:
    [entry] = [m for m in report["models"] if m["model"] == MODEL and m["version"] == version]
    return entry


# --- the distribution the card holds -------------------------------------------------------------


def test_the_survival_function_is_exact_at_every_listed_threshold(validation):
    scores, labels = validation
    roc = roc_points(labels, scores)
    assert len(roc["thresholds"]) < len(np.unique(scores))  # roc_curve dropped intermediate points
    thresholds, above = survival_points(roc, int(labels.sum()), int((1 - labels).sum()))
    assert np.all(np.diff(thresholds) > 0)
    for t, a in zip(thresholds, above):
        assert a == np.sum(scores >= t) or (t == 1.0 and a == 0)  # the clamped top threshold holds none


def test_bins_are_listed_thresholds_with_exact_counts_of_at_least_the_minimum(validation):
    scores, labels = validation
    thresholds, above = survival_points(roc_points(labels, scores), int(labels.sum()), int((1 - labels).sum()))
    edges, counts = card_bins(thresholds, above, len(scores), 10, 5)
    assert set(edges) <= set(thresholds) and 8 <= len(counts) <= 10
    assert counts.tolist() == D.bin_counts(scores, edges).tolist() and counts.min() >= 5
    # a small set: fewer, larger bins; too small: none
    few, few_labels = validation_set(30, seed=4)
    t, a = survival_points(roc_points(few_labels, few), int(few_labels.sum()), int((1 - few_labels).sum()))
    small = card_bins(t, a, 30, 10, 10)
    assert small is not None and len(small[1]) <= 3 and small[1].min() >= 10
    assert card_bins(t, a, 30, 10, 20) is None


def test_the_cdf_is_exact_at_the_thresholds_and_the_validation_scores_do_not_drift(validation):
    scores, labels = validation
    thresholds, above = survival_points(roc_points(labels, scores), int(labels.sum()), int((1 - labels).sum()))
    cdf = card_cdf(thresholds, above, len(scores))
    inner = thresholds < 1.0
    assert cdf(thresholds[inner]) == pytest.approx(np.mean(scores[None, :] < thresholds[inner, None], axis=1))
    edges, counts = card_bins(thresholds, above, len(scores), 10, 5)
    drift = D.compare_binned(counts, scores, edges, cdf, psi_moderate=0.1, psi_major=0.25, n_resamples=200,
                             confidence_level=0.95, seed=0)
    assert drift.psi == pytest.approx(0.0, abs=1e-12) and drift.n_reference == 600
    assert drift.ks_p_value > 0.5 and "multinomial" in drift.method
    assert drift.psi_ci[0] is not None and drift.psi_ci[0] <= drift.psi_ci[1]


def test_the_multinomial_bootstrap_narrows_with_a_larger_reference():
    edges = np.array([0.25, 0.5, 0.75])
    current = np.random.default_rng(0).uniform(size=400)
    cdf = lambda x: np.clip(x, 0, 1)  # noqa: E731
    kwargs = dict(psi_moderate=0.1, psi_major=0.25, n_resamples=300, confidence_level=0.95, seed=0)
    small = D.compare_binned(np.array([10, 10, 10, 10]), current, edges, cdf, **kwargs).psi_ci
    big = D.compare_binned(np.array([1000, 1000, 1000, 1000]), current, edges, cdf, **kwargs).psi_ci
    assert big[1] - big[0] < small[1] - small[0]


# --- the monitor with the card as its reference --------------------------------------------------


def test_a_run_from_the_validation_distribution_raises_no_alert(tmp_path, cards, mon):
    run = mon.write_run(tmp_path / "same", mon.finding_records(mon.beta_scores(400, seed=2), prefix="cur"))
    report = _monitor(tmp_path, [run], cards=cards)
    assert report["alerts"] == []
    assert report["reference"]["kind"] == "model_cards" and report["reference"]["cards"] == str(cards)
    [entry] = report["reference"]["versions"]
    assert (entry["kind"], entry["source"]) == ("model_card", str(cards / f"{MODEL}.json"))
    figures = _model(report)
    assert figures["reference"]["card"]["version"] == VERSION and figures["reference"]["card"]["n"] == 600
    [period] = figures["runs"]
    assert period["drift"]["level"] == "stable" and period["drift"]["psi"] < 0.10
    assert period["drift"]["ks_p_value"] > 0.01 and period["drift"]["n_reference"] == 600
    assert period["flag_rate"]["outside"] is False
    page = (tmp_path / "report" / "report.html").read_text()
    assert f"model cards in {cards}" in page and "edges among the card&#x27;s ROC thresholds" in page


def test_a_shifted_run_raises_drift_and_flag_rate_alerts(tmp_path, cards, mon):
    run = mon.write_run(tmp_path / "shifted", mon.finding_records(mon.beta_scores(400, seed=3, shift=0.1),
                                                                  prefix="cur"))
    report = _monitor(tmp_path, [run], cards=cards)
    by_metric = {alert["metric"]: alert for alert in report["alerts"]}
    assert set(by_metric) == {"psi", "flag_rate"}
    assert by_metric["psi"]["value"] > 0.25 and "against 600" in by_metric["psi"]["detail"]


def test_a_card_of_another_version_is_not_a_reference(tmp_path, validation, mon):
    cards = tmp_path / "cards"
    write_card(cards, *validation, version="1.0.0")
    run = mon.write_run(tmp_path / "run", mon.finding_records(mon.beta_scores(100, seed=3, shift=0.3), prefix="cur"))
    report = _monitor(tmp_path, [run], cards=cards)
    assert report["alerts"] == []
    [entry] = report["reference"]["versions"]
    assert entry["kind"] == "none" and entry["note"].startswith(NO_REFERENCE)
    assert "fracture_xray 1.0.0, not 1.1.0" in entry["note"] and "another version" in entry["note"]
    [period] = _model(report)["runs"]
    assert period["drift"] is None and period["flag_rate"] is None


def test_a_card_evaluated_per_slice_is_not_a_reference(tmp_path, validation):
    write_card(tmp_path, *validation, unit="slice")
    card, why = load_card_reference(tmp_path, MODEL, VERSION, n_bins=10, min_per_bin=5)
    assert card is None and "per slice" in why


def test_reference_run_overrides_the_card(tmp_path, cards, mon):
    ref = mon.write_run(tmp_path / "ref", mon.finding_records(mon.beta_scores(300, seed=7, shift=0.1), prefix="r"))
    run = mon.write_run(tmp_path / "run", mon.finding_records(mon.beta_scores(300, seed=8, shift=0.1), prefix="c"))
    report = _monitor(tmp_path, [run], reference=ref, cards=cards)
    assert report["alerts"] == []  # against the card this run drifts (the test above); against the run it does not
    assert report["reference"]["kind"] == "run" and report["reference"]["run"] == str(ref)
    [entry] = report["reference"]["versions"]
    assert (entry["kind"], entry["source"]) == ("run", str(ref))
    figures = _model(report)
    assert figures["reference"]["card"] is None and figures["runs"][0]["drift"]["n_reference"] == 300


def test_rows_flagged_at_another_threshold_than_the_card_s_are_not_compared_on_flag_rate(tmp_path, validation, mon):
    cards = tmp_path / "cards"
    write_card(cards, *validation, threshold=0.4)
    run = mon.write_run(tmp_path / "run", mon.finding_records(mon.beta_scores(100, seed=2), prefix="cur"))
    report = _monitor(tmp_path, [run], cards=cards)
    [period] = _model(report)["runs"]
    assert period["flag_rate"] is None and period["drift"] is not None
    assert "threshold(s) 0.5" in period["flag_rate_note"] and "at 0.4" in period["flag_rate_note"]


def test_a_cards_folder_that_is_not_one_stops_before_anything_is_written(tmp_path, mon):
    run = mon.write_run(tmp_path / "run", mon.finding_records(mon.beta_scores(50, seed=2), prefix="cur"))
    with pytest.raises(MedassistError, match="--cards .*missing.*not a folder"):
        run_monitor([run], tmp_path / "report", cards=tmp_path / "missing")
    assert not (tmp_path / "report").exists()


def test_an_unreadable_card_is_no_reference_and_says_why(tmp_path, mon):
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / f"{MODEL}.json").write_text("{not json")
    run = mon.write_run(tmp_path / "run", mon.finding_records(mon.beta_scores(50, seed=2), prefix="cur"))
    report = _monitor(tmp_path, [run], cards=cards)
    [entry] = report["reference"]["versions"]
    assert entry["kind"] == "none" and "not a readable model card" in entry["note"]


def test_the_shipped_fracture_card_gives_full_bins_and_its_flag_rate():
    from medassist.models.registry import spec_by_name
    from medassist.monitor.card_reference import REPO_CARDS

    shipped = spec_by_name("fracture_xray").version
    card, why = load_card_reference(REPO_CARDS, "fracture_xray", shipped, n_bins=10, min_per_bin=5)
    if card is None and "no model card" in why:
        pytest.skip(why)
    assert card is not None, why
    assert card.n == card.n_positive + card.n_negative and len(card.counts) == 10 and min(card.counts) >= 5
    assert sum(card.counts) == card.n
    # the flag count at the card's threshold (TP + FP) lies between the survival function's values at
    # the listed thresholds either side of it (the shipped threshold is not itself a listed one)
    thresholds, above = np.asarray(card.thresholds), np.asarray(card.above)
    j = int(np.searchsorted(thresholds, card.threshold))
    assert thresholds[j - 1] < card.threshold <= thresholds[j]
    assert above[j] <= card.n_flagged <= above[j - 1]
