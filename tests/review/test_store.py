"""The decisions store: append-only, latest wins, CSV export, hash chain, concurrent writers."""

from __future__ import annotations

import csv
import multiprocessing
import sqlite3
import threading

import pytest

from medassist.errors import MedassistError
from medassist.review import store as store_mod
from medassist.review.anchor import Head
from medassist.review.store import (
    COLUMNS,
    GENESIS_HASH,
    compute_row_hash,
    compute_row_mac,
    default_db_path,
    genesis_mac,
    open_store,
    verify_chain,
)
from review_factory import write_many

KEY = ("1.2.3.1", "fracture_xray", "1.0.0", "fracture")


def finding(series_uid: str = KEY[0], **extra) -> dict:
    base = dict(
        study_uid="1.2.3",
        series_uid=series_uid,
        model="fracture_xray",
        model_version="1.0.0",
        finding="fracture",
        score=0.91,
        threshold=0.5,
        model_flagged=True,
    )
    base.update(extra)
    return base


@pytest.fixture()
def store(tmp_path):
    return open_store(tmp_path / "decisions.sqlite")


def test_schema_columns_wal_and_busy_timeout(store):
    with store.connect() as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(decisions)")]
        assert tuple(columns) == COLUMNS
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'decisions'").fetchone()[0]
    assert "AUTOINCREMENT" in sql and "CHECK(decision IN ('accept','reject','correct'))" in sql


def test_open_store_accepts_an_out_folder(tmp_path):
    opened = open_store(tmp_path)
    assert opened.path == default_db_path(tmp_path) == tmp_path / "decisions.sqlite"
    with pytest.raises(MedassistError, match="does not exist"):
        open_store(tmp_path / "missing" / "decisions.sqlite")


def test_append_only_latest_decision_wins(store):
    first = store.record_decision(**finding(), decision="accept", reviewer="Dr A")
    second = store.record_decision(**finding(), decision="reject", reviewer="Dr B", comment="motion artefact")
    assert second.id > first.id
    rows = store.all_rows()
    assert [r.decision for r in rows] == ["accept", "reject"]  # the first one is still there
    current = store.current_decisions()
    assert current[KEY].decision == "reject" and current[KEY].reviewer == "Dr B"
    assert store.current_decision(KEY).id == second.id
    assert [d.decision for d in store.history(KEY)] == ["accept", "reject"]
    assert store.history(("other", "m", "v", "f")) == []


def test_database_refuses_update_and_delete(store):
    store.record_decision(**finding(), decision="accept", reviewer="Dr A")
    with store.connect() as conn:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE decisions SET decision = 'reject'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM decisions")
    assert store.all_rows()[0].decision == "accept"


def test_correction_with_label_and_location(store):
    row = store.record_decision(
        **finding(), decision="correct", reviewer="Dr A", corrected_finding="dislocation",
        location={"slice": 0, "row": 120, "col": 64},
    )
    assert row.location == '{"col":64,"row":120,"slice":0}'
    assert row.location_dict == {"slice": 0, "row": 120, "col": 64}
    assert row.final_finding == "dislocation"
    stored = store.current_decision(KEY)
    assert stored == row
    assert stored.decided_at.endswith("Z") and stored.decided_at[:4].isdigit()


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(decision="maybe"), "not one of"),
        (dict(reviewer="  "), "reviewer is required"),
        (dict(reviewer=None), "reviewer is required"),
        (dict(decision="correct"), "needs a corrected finding or a location"),
        (dict(decision="accept", corrected_finding="x"), "only goes with 'correct'"),
        (dict(decision="correct", location={"slice": 0, "row": -1, "col": 2}), "non-negative integer"),
        (dict(decision="correct", location={"row": 1, "col": 2}), "slice, row and col"),
        (dict(decision="accept", score=float("nan")), "finite"),
        (dict(decision="accept", decided_at="2024-01-01T10:00:00"), "no time zone"),
    ],
)
def test_bad_decisions_are_refused(store, changes, message):
    kwargs = dict(finding(), decision="accept", reviewer="Dr A")
    kwargs.update(changes)
    with pytest.raises(MedassistError, match=message):
        store.record_decision(**kwargs)
    assert store.all_rows() == []


def test_timestamps_are_normalised_to_utc(store):
    row = store.record_decision(**finding(), decision="accept", reviewer="Dr A",
                                decided_at="2024-05-01T11:30:00+02:00")
    assert row.decided_at == "2024-05-01T09:30:00.000000Z"


def test_study_status(store):
    keys = [KEY, ("1.2.3.2", "fracture_xray", "1.0.0", "fracture")]
    assert store.study_status(keys) == "unreviewed"
    store.record_decision(**finding(), decision="accept", reviewer="Dr A")
    assert store.study_status(keys) == "in progress"
    store.record_decision(**finding(series_uid="1.2.3.2"), decision="reject", reviewer="Dr A")
    assert store.study_status(keys) == "reviewed"
    assert store.study_status([]) == "no findings"
    current = store.current_decisions(study_uid="1.2.3")
    assert set(current) == set(keys)
    assert store.current_decisions(study_uid="9.9") == {}


def test_export_csv_all_rows_and_current_only(store, tmp_path):
    store.record_decision(**finding(), decision="accept", reviewer="Dr A")
    store.record_decision(**finding(), decision="correct", reviewer="Dr A", corrected_finding="no fracture",
                          comment='said "maybe", then, no')
    path = store.export_csv(tmp_path / "decisions.csv")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS
    assert [r["decision"] for r in rows] == ["accept", "correct"]
    assert rows[1]["comment"] == 'said "maybe", then, no'
    assert rows[0]["corrected_finding"] == "" and float(rows[0]["score"]) == 0.91
    current = store.export_csv(tmp_path / "current.csv", current_only=True)
    with current.open(newline="") as handle:
        assert [r["decision"] for r in csv.DictReader(handle)] == ["correct"]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left nothing behind


def test_export_csv_neutralises_cells_a_spreadsheet_would_run(store, tmp_path):
    from medassist.sanitize import csv_unsafe

    store.record_decision(**finding(), decision="correct", reviewer="@admin", corrected_finding="-fracture",
                          comment="=HYPERLINK(\"http://evil\",\"click\")")
    with store.export_csv(tmp_path / "decisions.csv").open(newline="") as handle:
        [row] = list(csv.DictReader(handle))
    assert row["comment"] == "'=HYPERLINK(\"http://evil\",\"click\")"
    assert row["reviewer"] == "'@admin" and csv_unsafe(row["corrected_finding"]) == "-fracture"
    assert float(row["score"]) == 0.91  # numbers stay numbers


def test_chain_links_rows_and_verifies(store):
    assert verify_chain(store) == []
    a = store.record_decision(**finding(), decision="accept", reviewer="Dr A")
    b = store.record_decision(**finding(), decision="reject", reviewer="Dr B")
    with store.connect() as conn:
        log_id = conn.execute("SELECT value FROM chain_meta WHERE name = 'log_id'").fetchone()[0]
    assert (a.id, b.id) == (1, 2)
    assert a.prev_hash == genesis_mac(store.key(), log_id) and b.prev_hash == a.row_hash
    assert a.row_hash == compute_row_mac(store.key(), a.id, a.prev_hash, a.as_dict())
    assert a.row_hash != compute_row_hash(GENESIS_HASH, a.as_dict())  # keyed, not the format 1 sha256
    assert store.head() == b.row_hash
    assert store.chain_head() == Head(2, b.row_hash, 2)
    assert verify_chain(store.path) == [] and store.verify_chain() == []


def _tamper(store, sql: str, *params) -> None:
    """What someone with the file could do: drop the guard triggers and edit."""
    with store.connect() as conn:
        conn.execute("DROP TRIGGER decisions_no_update")
        conn.execute("DROP TRIGGER decisions_no_delete")
        conn.execute(sql, params)


def test_chain_verify_detects_an_edited_row(store):
    for decision in ("accept", "reject", "accept"):
        store.record_decision(**finding(), decision=decision, reviewer="Dr A")
    _tamper(store, "UPDATE decisions SET decision = 'accept' WHERE id = 2")
    problems = verify_chain(store)
    assert [p for p in problems if p.startswith("row ")] == [
        "row 2: its MAC does not match its contents (the row was edited, or not written by medassist with this "
        "site key)"
    ]
    assert sum("guard trigger" in p for p in problems) == 2


def test_chain_verify_detects_removed_rows(store):
    for decision in ("accept", "reject", "accept", "reject"):
        store.record_decision(**finding(), decision=decision, reviewer="Dr A")
    _tamper(store, "DELETE FROM decisions WHERE id = 2")
    problems = verify_chain(store)
    assert any(p.startswith("row 3: prev_hash") for p in problems)
    assert any(p.startswith("row 3: expected id 2") for p in problems)
    with store.connect() as conn:
        conn.execute("DELETE FROM decisions WHERE id = 4")
    problems = verify_chain(store)
    assert any("the newest rows were removed" in p for p in problems)
    assert any("newest decisions were deleted" in p for p in problems)


def test_verify_chain_on_missing_file(tmp_path):
    with pytest.raises(MedassistError, match="no decisions database"):
        verify_chain(tmp_path / "nope.sqlite")


def test_concurrent_processes_lose_nothing(tmp_path):
    path = str(open_store(tmp_path / "decisions.sqlite").path)
    n = 40
    # fork: spawn would re-run whatever __main__ an earlier AppTest left behind (the app script)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=write_many, args=(path, f"writer{w}", n)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    rows = store_mod.DecisionStore(path).all_rows()
    assert len(rows) == 2 * n
    assert {r.reviewer for r in rows} == {"writer0", "writer1"}
    assert verify_chain(path) == []


def test_concurrent_threads_lose_nothing(tmp_path):
    shared = open_store(tmp_path / "decisions.sqlite")
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(w: int) -> None:
        try:
            barrier.wait()
            for i in range(25):
                shared.record_decision(**finding(series_uid=f"9.{w}.{i}"), decision="reject", reviewer=f"t{w}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(shared.all_rows()) == 100
    assert len(shared.current_decisions()) == 100
    assert verify_chain(shared) == []
