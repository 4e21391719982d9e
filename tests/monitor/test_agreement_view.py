"""Reviewer agreement from real decision logs (written by the review store), read without changes."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest
from sklearn.metrics import cohen_kappa_score

from medassist.monitor.run import run_monitor
from medassist.review.store import open_store, verify_chain


def _no_cards(tmp_path):
    """An empty model-card folder: these tests are about agreement, not the cards' reference."""
    folder = tmp_path / "no-cards"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _report(tmp_path, runs, **kwargs) -> dict:
    out = tmp_path / "report"
    kwargs.setdefault("cards", _no_cards(tmp_path))
    run_monitor(runs, out, **kwargs)
    return json.loads((out / "monitor.json").read_text())


def _period(report: dict) -> dict:
    [model] = [m for m in report["models"] if (m["model"], m["version"]) == ("fracture_xray", "1.1.0")]
    [period] = model["runs"]
    return period


def test_kappa_and_rates_match_a_hand_computed_example(tmp_path, limits_file, mon):
    records = mon.finding_records([0.9, 0.8, 0.2, 0.1], prefix="k")  # model flags 1, 1, 0, 0
    run = mon.write_run(tmp_path / "run", records)
    mon.review(run, records, lambda i, r: ("accept", "reject", "accept", "accept")[i])  # reviewer: 1, 0, 0, 0
    report = _report(tmp_path, [run], limits_path=limits_file(min_reviewed=1))
    a = _period(report)["agreement"]
    # po = 3/4; pe = P(model 1) P(reader 1) + P(model 0) P(reader 0) = 1/2 * 1/4 + 1/2 * 3/4 = 1/2
    assert a["cohen_kappa"] == pytest.approx((0.75 - 0.5) / (1 - 0.5)) == pytest.approx(0.5)
    assert a["cohen_kappa"] == pytest.approx(cohen_kappa_score([1, 1, 0, 0], [1, 0, 0, 0]))
    assert (a["n_decided"], a["n_accept"], a["n_reject"], a["n_correct"]) == (4, 3, 1, 0)
    assert a["accept_rate"] == pytest.approx(0.75) and a["reject_rate"] == pytest.approx(0.25)
    assert a["n_overrides"] == 1 and a["override_rate"] == pytest.approx(0.25)
    assert report["alerts"] == []  # 0.5 is above the 0.40 floor


@pytest.fixture
def reviewed_run(tmp_path, mon):
    """60 findings, HAND and LEG in turn; the reader accepts every one, or rejects 23 of the 30 LEG findings."""
    def make(name: str, disagree_on_leg: bool):
        records = mon.finding_records(mon.beta_scores(60, seed=7, shift=0.15), prefix=name)
        run = mon.write_run(tmp_path / name, records)

        def decide(i, record):
            return "reject" if disagree_on_leg and record["body_part"] == "LEG" and i % 8 in (1, 3, 5) else "accept"
        mon.review(run, records, decide)
        return run
    return make


def test_reviewer_disagreement_lowers_kappa_and_raises_the_agreement_alert(tmp_path, reviewed_run):
    report = _report(tmp_path / "a", [reviewed_run("agree", disagree_on_leg=False)])
    assert _period(report)["agreement"]["cohen_kappa"] == pytest.approx(1.0) and report["alerts"] == []

    report = _report(tmp_path / "b", [reviewed_run("disagree", disagree_on_leg=True)])
    period = _period(report)
    kappa = period["agreement"]["cohen_kappa"]
    assert kappa < 0.40 and period["agreement"]["n_decided"] == 60
    [alert] = report["alerts"]
    assert (alert["kind"], alert["metric"], alert["limit"]) == ("agreement", "cohen_kappa", 0.40)
    assert alert["value"] == pytest.approx(kappa)
    by_part = period["agreement_by_subgroup"]["body_part"]
    assert by_part["HAND"]["cohen_kappa"] == pytest.approx(1.0) and by_part["HAND"]["n_overrides"] == 0
    assert by_part["LEG"]["n_overrides"] == 23 and by_part["LEG"]["cohen_kappa"] < 0
    assert period["agreement_by_subgroup"]["modality"]["DX"]["n_decided"] == 60


def test_the_latest_decision_of_a_finding_is_the_one_counted(tmp_path, limits_file, mon):
    records = mon.finding_records([0.9, 0.1], prefix="l")
    run = mon.write_run(tmp_path / "run", records)
    mon.review(run, records, lambda i, r: "reject")
    mon.review(run, records, lambda i, r: "accept")  # changed their mind
    report = _report(tmp_path, [run], limits_path=limits_file(min_reviewed=1))
    a = _period(report)["agreement"]
    assert a["n_decided"] == 2 and a["n_accept"] == 2 and a["n_overrides"] == 0
    assert report["runs"][0]["decisions"]["rows_in_log"] == 4


def test_the_decision_log_is_read_without_changing_it(tmp_path, reviewed_run):
    run = reviewed_run("ro", disagree_on_leg=True)
    db = run / "decisions.sqlite"
    before = hashlib.sha256(db.read_bytes()).hexdigest(), db.stat().st_mtime_ns
    others = {p.name for p in run.iterdir()}
    report = _report(tmp_path, [run])
    assert (hashlib.sha256(db.read_bytes()).hexdigest(), db.stat().st_mtime_ns) == before
    assert report["runs"][0]["decisions"]["integrity"] == "verified"
    # a read-only SQLite connection to a WAL database may leave its (empty) WAL and shared-memory files
    new = {p.name for p in run.iterdir()} - others
    assert new <= {"decisions.sqlite-wal", "decisions.sqlite-shm"}
    wal = run / "decisions.sqlite-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    assert verify_chain(db) == [] and len(open_store(run).all_rows()) == 60  # the app still opens it


def test_a_tampered_log_raises_an_integrity_alert(tmp_path, reviewed_run):
    run = reviewed_run("tampered", disagree_on_leg=False)
    with sqlite3.connect(run / "decisions.sqlite") as conn:
        conn.execute("DROP TRIGGER decisions_no_update")
        conn.execute("UPDATE decisions SET decision = 'reject' WHERE id = 1")
    report = _report(tmp_path, [run])
    assert report["runs"][0]["decisions"]["integrity"] == "failed"
    [alert] = [a for a in report["alerts"] if a["kind"] == "integrity"]
    assert alert["metric"] == "decision_log_problems" and alert["value"] >= 1 and "audit --verify" in alert["detail"]


def test_without_the_site_key_the_log_is_read_but_not_verified(tmp_path, reviewed_run):
    run = reviewed_run("nokey", disagree_on_leg=False)
    report = _report(tmp_path, [run], key_file=tmp_path / "no-such.key")
    log = report["runs"][0]["decisions"]
    assert log["integrity"] == "not checked" and "no site key" in log["note"]
    assert _period(report)["agreement"]["n_decided"] == 60
    assert report["alerts"] == []


def test_an_unreadable_log_is_a_problem_and_the_scores_are_still_reported(tmp_path, mon):
    records = mon.finding_records(mon.beta_scores(40, seed=2), prefix="bad")
    run = mon.write_run(tmp_path / "run", records)
    (run / "decisions.sqlite").write_bytes(b"not a database at all" * 100)
    out = tmp_path / "report"
    result = run_monitor([run], out, cards=_no_cards(tmp_path))
    assert len(result.problems) == 1 and str(run / "decisions.sqlite") in result.problems[0]
    report = json.loads((out / "monitor.json").read_text())
    assert report["runs"][0]["decisions"]["integrity"] == "unreadable"
    assert _period(report)["scores"]["n_findings"] == 40 and _period(report)["agreement"] is None


def test_decisions_take_sex_age_band_and_manufacturer_from_their_worklist_rows(tmp_path, limits_file, mon):
    # model flags 1 1 0 0 1 0; sexes F M F M F (empty); the reader overrides findings 1 and 2 (both M or 0-17)
    records = mon.finding_records([0.9, 0.8, 0.2, 0.1, 0.7, 0.3], prefix="s", sexes=("F", "M", "F", "M", "F", ""),
                                  age_bands=("65+", "0-17", "0-17", "65+", "65+", "65+"),
                                  manufacturers=("ACME", "ACME", "Other", "Other", "ACME", ""))
    run = mon.write_run(tmp_path / "run", records)
    mon.review(run, records, lambda i, r: "reject" if i == 1 else "accept")
    report = _report(tmp_path, [run], limits_path=limits_file(min_reviewed=1))
    period = _period(report)
    by_sex = period["agreement_by_subgroup"]["sex"]
    assert {level: a["n_decided"] for level, a in by_sex.items()} == {"F": 3, "M": 2, "unknown": 1}
    assert by_sex["M"]["n_reject"] == 1 and by_sex["M"]["override_rate"] == pytest.approx(0.5)
    assert by_sex["F"]["n_overrides"] == 0 and by_sex["F"]["cohen_kappa"] == pytest.approx(1.0)
    by_age = period["agreement_by_subgroup"]["age_band"]
    assert {level: a["n_overrides"] for level, a in by_age.items()} == {"0-17": 1, "65+": 0}
    by_maker = period["agreement_by_subgroup"]["manufacturer"]
    assert {level: a["n_decided"] for level, a in by_maker.items()} == {"ACME": 3, "Other": 2, "unknown": 1}
    assert by_maker["ACME"]["reject_rate"] == pytest.approx(1 / 3)
