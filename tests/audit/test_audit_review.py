"""Human-AI agreement from a review decisions database (built here with plain sqlite3)."""

from __future__ import annotations

import sqlite3

import pytest
from audit_helpers import decision, make_legacy_review_db, make_review_db
from sklearn.metrics import cohen_kappa_score

from medassist.audit.agreement import final_call, review_agreement, verify_review_log
from medassist.errors import MedassistError


def _rows():
    """Version 0.1.0: 10 current findings; version 0.2.0: 3; plus superseded rows and another model."""
    v1 = [
        decision("s1", 1, "accept"), decision("s2", 1, "accept"), decision("s3", 1, "reject"),    # override
        decision("s4", 0, "accept"), decision("s5", 0, "accept"), decision("s6", 0, "accept"),
        decision("s7", 0, "correct", corrected="fracture", location='{"col":1,"row":2,"slice":0}'),  # override
        decision("s8", 1, "correct", location='{"col":5,"row":5,"slice":0}'),  # moved location: agrees
        decision("s9", 1, "correct", corrected="no_fracture"),                  # override: negative
        decision("s10", 0, "reject", day="2024-06-03"),                          # override: called positive
    ]
    superseded = [decision("s4", 0, "reject", day="2024-04-30"), decision("s1", 1, "reject", day="2024-04-29")]
    v2 = [decision("s1", 1, "accept", version="0.2.0", day="2024-07-01"),
          decision("s2", 0, "accept", version="0.2.0", day="2024-07-01"),
          decision("s3", 0, "reject", version="0.2.0", day="2024-07-02")]
    other = [decision("s1", 1, "reject", model="brain_mri")]
    # superseded rows come first in the log: the latest row per finding is the current decision
    return superseded + v1 + v2 + other


def test_agreement_and_kappa_per_version(tmp_path):
    db = make_review_db(tmp_path / "decisions.sqlite", _rows())
    out = review_agreement(db, "toy_fracture", negative_labels=("no_fracture",))
    assert out["rows_in_log"] == 15 and out["current_decisions"] == 13
    v1 = out["by_version"]["0.1.0"]
    model = [1, 1, 1, 0, 0, 0, 0, 1, 1, 0]
    human = [1, 1, 0, 0, 0, 0, 1, 1, 0, 1]
    assert v1["n_decided"] == 10
    assert v1["n_accept"] == 5 and v1["accept_rate"] == pytest.approx(0.5)
    assert v1["n_reject"] == 2 and v1["reject_rate"] == pytest.approx(0.2)
    assert v1["n_correct"] == 3 and v1["correct_rate"] == pytest.approx(0.3)
    assert v1["cohen_kappa"] == pytest.approx(cohen_kappa_score(model, human))
    assert v1["cohen_kappa"] == pytest.approx(0.2)  # po 0.6, pe 0.5: (0.6 - 0.5) / 0.5
    assert v1["agreement"] == pytest.approx(0.6)
    assert v1["n_overrides"] == 4 and v1["n_reviewers"] == 1
    assert v1["first_decision"].startswith("2024-05-01") and v1["last_decision"].startswith("2024-06-03")
    assert set(out["by_month"]["0.1.0"]) == {"2024-05", "2024-06"}
    v2 = out["by_version"]["0.2.0"]
    assert v2["n_decided"] == 3
    assert v2["cohen_kappa"] == pytest.approx(cohen_kappa_score([1, 0, 0], [1, 0, 1]))
    kinds = {(o["model_version"], o["series_uid"]): o["kind"] for o in out["overrides"]}
    assert kinds == {
        ("0.1.0", "s3"): "flagged, rejected",
        ("0.1.0", "s7"): "not flagged, corrected to positive",
        ("0.1.0", "s9"): "flagged, corrected to negative",
        ("0.1.0", "s10"): "not flagged, rejected (called positive)",
        ("0.2.0", "s3"): "not flagged, rejected (called positive)",
    }


def test_final_call_rules():
    assert final_call("accept", True, None) is True
    assert final_call("accept", False, None) is False
    assert final_call("reject", True, None) is False
    assert final_call("correct", False, "fracture") is True
    assert final_call("correct", True, None) is True  # location corrected
    assert final_call("correct", True, "none") is False
    assert final_call("correct", True, "no_fracture") is False
    assert final_call("correct", True, "normal", ("no_fracture",)) is False
    assert final_call("maybe", True, None) is None


def test_constant_calls_give_undefined_kappa(tmp_path):
    db = make_review_db(tmp_path / "d.sqlite", [decision(f"s{i}", 1, "accept") for i in range(4)])
    v = review_agreement(db, "toy_fracture")["by_version"]["0.1.0"]
    assert v["cohen_kappa"] is None and v["agreement"] == 1.0 and v["accept_rate"] == 1.0


def _edit(db, sql: str) -> None:
    """Change the log as someone with the file could: drop the guard triggers, then edit."""
    con = sqlite3.connect(db)
    con.execute("DROP TRIGGER decisions_no_update")
    con.execute("DROP TRIGGER decisions_no_delete")
    con.execute(sql)
    con.commit()
    con.close()


def test_review_log_verification_detects_an_edit(tmp_path):
    db = make_review_db(tmp_path / "decisions.sqlite", _rows())
    assert verify_review_log(db) == []
    _edit(db, "UPDATE decisions SET decision = 'accept' WHERE id = 5")
    problems = verify_review_log(db)
    assert any(p.startswith("row 5: its MAC does not match") for p in problems)


def test_review_log_verification_detects_a_removed_row(tmp_path):
    db = make_review_db(tmp_path / "decisions.sqlite", _rows())
    _edit(db, "DELETE FROM decisions WHERE id = 3")
    problems = verify_review_log(db)
    assert any(p.startswith("row 4: prev_hash") for p in problems)
    assert any("holds 15 row(s), last id 16 but its anchor records 16 row(s)" in p for p in problems)


def test_review_log_verification_reports_an_unkeyed_log(tmp_path):
    db = make_legacy_review_db(tmp_path / "decisions.sqlite", _rows())
    problems = verify_review_log(db)
    assert len(problems) == 1 and "an unkeyed decision log (format 1" in problems[0]
    assert review_agreement(db, "toy_fracture")["rows_in_log"] == 15  # still readable for the statistics


def test_not_a_review_database(tmp_path):
    bad = tmp_path / "x.sqlite"
    sqlite3.connect(bad).execute("CREATE TABLE other(a)").connection.close()
    with pytest.raises(MedassistError, match="decisions"):
        review_agreement(bad, "toy_fracture")
    with pytest.raises(MedassistError, match="not found"):
        review_agreement(tmp_path / "missing.sqlite", "toy_fracture")
