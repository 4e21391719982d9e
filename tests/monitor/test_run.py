"""Drift and flag-rate figures and alerts over synthetic runs written with the worklist writer."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pytest

from medassist.errors import MedassistError
from medassist.monitor.report import ALERT_KEYS
from medassist.monitor.run import NO_REFERENCE, run_monitor

MODEL, VERSION, THRESHOLD = "fracture_xray", "1.1.0", 0.5  # as tests/monitor/conftest.py writes them


def _model(report: dict, model: str = MODEL, version: str = VERSION) -> dict:
    [entry] = [m for m in report["models"] if m["model"] == model and m["version"] == version]
    return entry


def _monitor(tmp_path, runs, reference, **kwargs) -> dict:
    """The report of run_monitor; without a reference, with an empty model-card folder (so these
    tests see no reference; tests/monitor/test_card_reference.py covers the cards)."""
    out = tmp_path / "report"
    if reference is None and "cards" not in kwargs:
        kwargs["cards"] = tmp_path / "no-cards"
        kwargs["cards"].mkdir(parents=True, exist_ok=True)
    run_monitor(runs, out, reference=reference, **kwargs)
    return json.loads((out / "monitor.json").read_text())


@pytest.fixture
def reference(tmp_path, mon):
    records = mon.finding_records(mon.beta_scores(600, seed=1), prefix="ref")
    return mon.write_run(tmp_path / "reference", records, mon.MONDAY - timedelta(days=14))


def test_a_run_from_the_reference_distribution_raises_no_alert(tmp_path, reference, mon):
    run = mon.write_run(tmp_path / "same", mon.finding_records(mon.beta_scores(400, seed=2), prefix="cur"))
    report = _monitor(tmp_path, [run], reference)
    assert report["alerts"] == []
    [period] = _model(report)["runs"]
    assert period["scores"]["n_studies"] == 400 and period["scores"]["n_findings"] == 400
    assert period["drift"]["psi"] < 0.10 and period["drift"]["level"] == "stable"
    assert period["drift"]["ks_p_value"] > 0.01
    assert period["flag_rate"]["outside"] is False
    assert report["reference"]["kind"] == "run" and report["reference"]["run"] == str(reference)


def test_a_shifted_run_with_twice_the_flag_rate_raises_psi_and_flag_rate_alerts(tmp_path, reference, mon):
    scores = mon.beta_scores(400, seed=3, shift=0.1)
    ref_rate = float(np.mean(mon.beta_scores(600, seed=1) >= THRESHOLD))
    assert np.mean(scores >= THRESHOLD) >= 1.8 * ref_rate  # the flag rate (about) doubled
    run = mon.write_run(tmp_path / "shifted", mon.finding_records(scores, prefix="cur"))
    report = _monitor(tmp_path, [run], reference)
    assert all(tuple(alert) == ALERT_KEYS for alert in report["alerts"])
    by_kind = {alert["kind"]: alert for alert in report["alerts"]}
    assert set(by_kind) == {"drift", "flag_rate"} and len(report["alerts"]) == 2
    drift = by_kind["drift"]
    assert (drift["model"], drift["version"], drift["metric"], drift["limit"]) == (MODEL, VERSION, "psi", 0.25)
    assert drift["value"] > 0.25 and str(run) in drift["detail"]
    rate = by_kind["flag_rate"]
    low, high = rate["limit"]
    assert rate["value"] == pytest.approx(np.mean(scores >= THRESHOLD)) and not low <= rate["value"] <= high
    assert low <= ref_rate <= high


def test_below_min_studies_the_figures_are_reported_without_an_alert(tmp_path, reference, mon):
    run = mon.write_run(tmp_path / "small", mon.finding_records(mon.beta_scores(20, seed=3, shift=0.3), prefix="cur"))
    report = _monitor(tmp_path, [run], reference)
    assert report["alerts"] == []
    [period] = _model(report)["runs"]
    assert period["drift"]["psi"] > 0.25 and period["scores"]["n_studies"] == 20 < report["limits"]["min_studies"]


def test_a_week_pools_its_runs_and_alerts_where_no_single_run_could(tmp_path, reference, mon):
    def run(name, seed, shift, day):
        records = mon.finding_records(mon.beta_scores(20, seed=seed, shift=shift), prefix=name)
        return mon.write_run(tmp_path / name, records, mon.MONDAY + timedelta(days=day))

    monday, tuesday, later = run("mon", 4, 0.3, 0), run("tue", 5, 0.3, 1), run("next", 6, 0.0, 7)
    report = _monitor(tmp_path, [monday, tuesday, later], reference)
    figures = _model(report)
    assert [p["iso_week"] for p in figures["runs"]] == ["2026-W49", "2026-W49", "2026-W50"]
    weeks = {p["label"]: p for p in figures["weeks"]}
    assert set(weeks) == {"2026-W49", "2026-W50"}
    assert weeks["2026-W49"]["scores"]["n_studies"] == 40 and weeks["2026-W49"]["runs"] == [str(monday), str(tuesday)]
    assert [(a["kind"], a["detail"].split(":")[0]) for a in report["alerts"]] == [
        ("drift", "ISO week 2026-W49"), ("flag_rate", "ISO week 2026-W49")]
    assert "worklist.csv" in report["dates"]["scores"]


def test_without_a_reference_the_report_says_so_and_compares_nothing(tmp_path, mon):
    run = mon.write_run(tmp_path / "run", mon.finding_records(mon.beta_scores(100, seed=3, shift=0.4), prefix="cur"))
    report = _monitor(tmp_path, [run], None)
    assert report["reference"]["kind"] == "model_cards"
    [entry] = report["reference"]["versions"]
    assert (entry["model"], entry["version"], entry["kind"]) == (MODEL, VERSION, "none")
    assert entry["note"].startswith(NO_REFERENCE) and "no model card" in entry["note"]
    [period] = _model(report)["runs"]
    assert period["drift"] is None and period["flag_rate"] is None and "--reference" in period["drift_note"]
    assert period["scores"]["flag_rate"] > 0.5
    assert report["alerts"] == []


def test_a_model_version_the_reference_lacks_is_not_compared(tmp_path, reference, mon):
    records = mon.finding_records(mon.beta_scores(100, seed=2), prefix="cur", version="2.0.0")
    report = _monitor(tmp_path, [mon.write_run(tmp_path / "run", records)], reference)
    figures = _model(report, version="2.0.0")
    assert figures["reference"]["scores"] is None
    assert "has no scores of fracture_xray 2.0.0" in figures["reference"]["note"]
    assert figures["runs"][0]["drift"] is None


def test_hand_computed_psi_through_the_whole_monitor(tmp_path, limits_file, mon):
    ref = mon.write_run(tmp_path / "ref", mon.finding_records([0.1, 0.2, 0.6, 0.7], prefix="r"))
    cur = mon.write_run(tmp_path / "cur", mon.finding_records([0.1, 0.6, 0.7, 0.8], prefix="c"))
    limits = limits_file(psi_bins=2, min_reference_per_bin=2, min_studies=1)
    report = _monitor(tmp_path, [cur], ref, limits_path=limits)
    [period] = _model(report)["runs"]
    assert period["drift"]["edges"] == [pytest.approx(0.4)]
    assert period["drift"]["psi"] == pytest.approx(0.25 * np.log(2) + 0.25 * np.log(1.5))
    assert [a["metric"] for a in report["alerts"]] == ["psi"]


def test_an_unusable_folder_is_listed_and_the_others_are_reported(tmp_path, reference, mon):
    run = mon.write_run(tmp_path / "run", mon.finding_records(mon.beta_scores(50, seed=2), prefix="cur"))
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "report"
    result = run_monitor([empty, run], out, reference=reference)
    assert len(result.problems) == 1 and str(empty) in result.problems[0] and "worklist.csv" in result.problems[0]
    report = json.loads((out / "monitor.json").read_text())
    assert [r["path"] for r in report["runs"]] == [str(run)] and report["problems"] == list(result.problems)


def test_a_reference_without_a_worklist_stops_before_anything_is_written(tmp_path, mon):
    run = mon.write_run(tmp_path / "run", mon.finding_records(mon.beta_scores(50, seed=2), prefix="cur"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(MedassistError, match="--reference .*nothing.*no worklist.csv"):
        run_monitor([run], tmp_path / "report", reference=tmp_path / "nothing")
    assert not (tmp_path / "report").exists()


def test_flag_rates_by_sex_age_band_and_manufacturer_with_empty_values_as_unknown(tmp_path, mon):
    scores = [0.9, 0.8, 0.1, 0.2, 0.7, 0.3, 0.6, 0.05]  # flagged: 1 1 0 0 1 0 1 0
    records = mon.finding_records(scores, prefix="g", sexes=("F", "M"), age_bands=("65+", "65+", "18-39", ""),
                                  manufacturers=("ACME", "ACME", "ACME", "Other"))
    report = _monitor(tmp_path, [mon.write_run(tmp_path / "run", records)], None)
    assert report["subgroups"]["reported"] == ["body_part", "modality", "manufacturer", "sex", "age_band"]
    groups = _model(report)["runs"][0]["scores_by_subgroup"]
    rates = {factor: {level: (g["n_findings"], g["n_flagged"]) for level, g in groups[factor].items()}
             for factor in ("sex", "age_band", "manufacturer")}
    assert rates["sex"] == {"F": (4, 3), "M": (4, 1)}
    assert rates["age_band"] == {"65+": (4, 3), "18-39": (2, 1), "unknown": (2, 0)}
    assert rates["manufacturer"] == {"ACME": (6, 4), "Other": (2, 0)}
    assert groups["sex"]["F"]["flag_rate"] == pytest.approx(0.75)
    page = (tmp_path / "report" / "report.html").read_text()
    assert "<td>sex</td><td>F</td><td>4</td><td>75.0%</td>" in page
    assert "<td>age_band</td><td>65+</td><td>4</td><td>75.0%</td>" in page
    assert "Subgroups: body part, modality, manufacturer, sex, age band" in page


def test_scores_are_dated_by_study_date_and_by_the_run_time_where_a_row_has_none(tmp_path, mon):
    # one run on Monday of 2026-W49 holding studies from 2026-W45 (a Thursday) and rows with no or a malformed date
    records = mon.finding_records([0.9, 0.1, 0.8, 0.2, 0.7, 0.3], prefix="d",
                                  study_dates=("20261105", "20261105", "", "", "20261331", "20261108"))
    run = mon.write_run(tmp_path / "run", records)
    report = _monitor(tmp_path, [run], None)
    [entry] = report["runs"]
    assert entry["iso_week"] == "2026-W49" and entry["n_study_dated"] == 3
    figures = _model(report)
    assert [p["iso_week"] for p in figures["runs"]] == ["2026-W49"]
    weeks = {p["label"]: p for p in figures["weeks"]}
    assert set(weeks) == {"2026-W45", "2026-W49"}  # 2026-11-08 is the Sunday of W45
    assert (weeks["2026-W45"]["scores"]["n_findings"], weeks["2026-W45"]["scores"]["n_flagged"]) == (3, 1)
    assert (weeks["2026-W49"]["scores"]["n_findings"], weeks["2026-W49"]["scores"]["n_flagged"]) == (3, 2)
    assert weeks["2026-W45"]["runs"] == weeks["2026-W49"]["runs"] == [str(run)]
    assert "study_date" in report["dates"]["scores"] and "worklist.csv" in report["dates"]["scores"]


def test_a_worklist_written_before_the_subgroup_columns_is_still_monitored(tmp_path, mon):
    import csv
    import os

    old_columns = ("study_uid", "series_uid", "patient_id", "accession", "modality", "body_part", "model",
                   "model_version", "finding", "score", "threshold", "flagged", "slices", "saliency_path",
                   "source_path", "error")
    records = mon.finding_records([0.9, 0.2, 0.6], prefix="old")
    folder = tmp_path / "old"
    folder.mkdir()
    with open(folder / "worklist.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=old_columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**r, "flagged": str(r["flagged"]).lower()} for r in records)
    os.utime(folder / "worklist.csv", (mon.MONDAY.timestamp(), mon.MONDAY.timestamp()))
    report = _monitor(tmp_path, [folder], None)
    [period] = _model(report)["runs"]
    assert (period["scores"]["n_findings"], period["scores"]["n_flagged"]) == (3, 2)
    for factor in ("manufacturer", "sex", "age_band"):
        assert set(period["scores_by_subgroup"][factor]) == {"unknown"}
    assert set(period["scores_by_subgroup"]["body_part"]) == {"HAND", "LEG"}
    assert [w["label"] for w in _model(report)["weeks"]] == ["2026-W49"] and report["runs"][0]["n_study_dated"] == 0
