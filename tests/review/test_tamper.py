"""The keyed, anchored decision log against someone who can write the output folder but not the key.

Each attack is done on a real SQLite file the way a person with the file would do it (sqlite3,
dropping the guard triggers where needed), then ``medassist audit --verify`` must exit 1 and name
the problem, and ``open_store`` (what the app calls) must refuse the log.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import sys
from pathlib import Path

import pytest

from medassist.cli import main
from medassist.review import anchor as anchor_mod
from medassist.keys import KEY_FILE_ENV
from medassist.review.store import (
    COLUMNS,
    HASH_COLUMNS,
    DecisionLogError,
    _SCHEMA,
    _statements,
    compute_row_hash,
    compute_row_mac,
    genesis_mac,
    open_store,
    verify_chain,
)


def _record(store, n: int, *, start: int = 0) -> None:
    for i in range(start, start + n):
        store.record_decision(
            study_uid="1.2.3", series_uid=f"1.2.3.{i}", model="fracture_xray", model_version="1.0.0",
            finding="fracture", score=0.91, threshold=0.5, model_flagged=True,
            decision="accept" if i % 2 else "reject", reviewer="Dr A",
        )


@pytest.fixture(autouse=True)
def site_key(tmp_path_factory, monkeypatch) -> Path:
    """A site key of this test's own (outside the output folder), so no test can spoil another's."""
    path = tmp_path_factory.mktemp("site") / "site.key"
    monkeypatch.setenv(KEY_FILE_ENV, str(path))
    monkeypatch.delenv("MEDASSIST_ANCHOR_DIR", raising=False)
    return path


@pytest.fixture()
def out(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture()
def log(out):
    """A keyed log of four decisions in OUT/decisions.sqlite."""
    store = open_store(out)
    _record(store, 4)
    assert verify_chain(store) == []
    return store


def _sql(db: Path, *statements: str) -> None:
    """Run statements as an attacker would, with the guard triggers dropped first."""
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER IF EXISTS decisions_no_update")
        conn.execute("DROP TRIGGER IF EXISTS decisions_no_delete")
        for statement in statements:
            conn.execute(statement)
    conn.close()


def _restore_triggers(db: Path) -> None:
    """Put the guard triggers back, so that only the chain and the anchor can tell."""
    with sqlite3.connect(db) as conn:
        for statement in _statements(_SCHEMA):
            if statement.startswith("CREATE TRIGGER"):
                conn.execute(statement)
    conn.close()


def _verify_cli(db: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["audit", "--verify", "--review-db", str(db)])
    return code, capsys.readouterr().out


def _refused(db: Path) -> str:
    with pytest.raises(DecisionLogError) as caught:
        open_store(db)
    assert str(db) in str(caught.value), "the error names the file"
    return str(caught.value)


def test_edited_row_with_recomputed_unkeyed_hashes_is_reported(log, capsys):
    _sql(log.path, "UPDATE decisions SET decision = 'accept', comment = 'fine' WHERE id = 2")
    # recompute the whole chain the way the format 1 docs describe it (sha256, no key)
    with sqlite3.connect(log.path) as conn:
        conn.row_factory = sqlite3.Row
        prev = "0" * 64
        for row in conn.execute("SELECT * FROM decisions ORDER BY id").fetchall():
            row_hash = compute_row_hash(prev, {name: row[name] for name in HASH_COLUMNS})
            conn.execute("UPDATE decisions SET prev_hash = ?, row_hash = ? WHERE id = ?", (prev, row_hash, row["id"]))
            prev = row_hash
    conn.close()
    _restore_triggers(log.path)
    code, printed = _verify_cli(log.path, capsys)
    assert code == 1
    assert "row 2: its MAC does not match its contents" in printed
    assert "row 2" in _refused(log.path)


def test_edited_row_with_a_chain_recomputed_under_a_guessed_key_is_reported(log, capsys):
    guessed = bytes(32)  # every formula of the store, but not the site key
    with sqlite3.connect(log.path) as conn:
        conn.row_factory = sqlite3.Row
        log_id = conn.execute("SELECT value FROM chain_meta WHERE name = 'log_id'").fetchone()[0]
        conn.execute("DROP TRIGGER decisions_no_update")
        conn.execute("UPDATE decisions SET decision = 'reject' WHERE id = 2")
        prev = genesis_mac(guessed, log_id)
        for row in conn.execute("SELECT * FROM decisions ORDER BY id").fetchall():
            row_mac = compute_row_mac(guessed, row["id"], prev, {name: row[name] for name in HASH_COLUMNS})
            conn.execute("UPDATE decisions SET prev_hash = ?, row_hash = ? WHERE id = ?", (prev, row_mac, row["id"]))
            prev = row_mac
    conn.close()
    _restore_triggers(log.path)
    code, printed = _verify_cli(log.path, capsys)
    assert code == 1
    assert "row 1: prev_hash does not match" in printed and "row 2: its MAC does not match" in printed
    _refused(log.path)


def test_edited_row_with_unchanged_hashes_is_reported(log, capsys):
    _sql(log.path, "UPDATE decisions SET decision = 'reject' WHERE id = 2")
    _restore_triggers(log.path)
    code, printed = _verify_cli(log.path, capsys)
    assert code == 1 and "row 2: its MAC does not match its contents" in printed


def test_deleted_newest_rows_with_a_rewound_counter_are_reported(log, capsys):
    _sql(log.path, "DELETE FROM decisions WHERE id > 2", "UPDATE sqlite_sequence SET seq = 2 WHERE name = 'decisions'")
    _restore_triggers(log.path)
    code, printed = _verify_cli(log.path, capsys)
    assert code == 1
    assert "holds 2 row(s), last id 2 but its anchor records 4 row(s), last id 4" in printed
    assert "newest decisions were deleted" in printed
    _refused(log.path)


def test_dropped_triggers_and_deletions_are_reported(log, capsys):
    _sql(log.path, "DELETE FROM decisions WHERE id IN (2, 4)")  # triggers stay dropped
    code, printed = _verify_cli(log.path, capsys)
    assert code == 1
    assert "the guard trigger decisions_no_update was dropped" in printed
    assert "the guard trigger decisions_no_delete was dropped" in printed
    assert "row 3: expected id 2" in printed and "row 3: prev_hash does not match" in printed
    assert "holds 2 row(s), last id 3 but its anchor records 4 row(s), last id 4" in printed
    _refused(log.path)


def test_a_truncated_database_is_reported_and_not_recreated(log, capsys):
    os.truncate(log.path, 0)
    code, printed = _verify_cli(log.path, capsys)
    assert code == 1 and "is empty (truncated, or re-created) but its anchor" in printed
    assert "records 4 row(s), last id 4" in printed
    assert "deleted, truncated or re-created" in _refused(log.path)
    assert log.path.stat().st_size == 0, "no fresh log was started over it"


def test_a_deleted_database_is_reported_and_not_recreated(log, capsys):
    for suffix in ("", "-wal", "-shm"):
        Path(str(log.path) + suffix).unlink(missing_ok=True)
    code, printed = _verify_cli(log.path, capsys)
    assert code == 1 and "the database is missing but its anchor" in printed
    _refused(log.path)
    assert not log.path.exists()


def test_a_database_recreated_empty_with_the_same_log_id_is_reported(log, capsys):
    with sqlite3.connect(log.path) as conn:
        log_id = conn.execute("SELECT value FROM chain_meta WHERE name = 'log_id'").fetchone()[0]
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(log.path) + suffix).unlink(missing_ok=True)
    with sqlite3.connect(log.path) as conn:
        for statement in _statements(_SCHEMA):
            conn.execute(statement)
        conn.execute("INSERT INTO chain_meta VALUES ('log_id', ?)", (log_id,))
        conn.execute("PRAGMA user_version = 2")
    conn.close()
    code, printed = _verify_cli(log.path, capsys)
    assert code == 1 and "holds no rows but its anchor records 4 row(s)" in printed
    _refused(log.path)


def test_a_database_replaced_by_another_genuine_log_is_reported(log, tmp_path, capsys):
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = open_store(other_dir)  # same site key, so every row of it carries a valid MAC
    _record(other, 4)
    assert verify_chain(other) == []
    for suffix in ("-wal", "-shm"):
        Path(str(log.path) + suffix).unlink(missing_ok=True)
    shutil.copyfile(other.path, log.path)
    code, printed = _verify_cli(log.path, capsys)
    assert code == 1 and "belongs to another decision log than its anchor" in printed
    _refused(log.path)


def test_a_database_rolled_back_to_an_older_copy_is_reported(out, tmp_path, capsys):
    store = open_store(out)
    _record(store, 2)
    saved = tmp_path / "copy.sqlite"
    shutil.copyfile(store.path, saved)
    _record(store, 2, start=2)
    shutil.copyfile(saved, store.path)
    code, printed = _verify_cli(store.path, capsys)
    assert code == 1 and "holds 2 row(s), last id 2 but its anchor records 4 row(s)" in printed


def test_a_missing_anchor_is_reported_and_blocks_the_log(log, capsys):
    log.anchor_path.unlink()
    code, printed = _verify_cli(log.path, capsys)
    assert code == 1 and f"its anchor {log.anchor_path} is missing" in printed
    assert "anchor" in _refused(log.path)
    with pytest.raises(DecisionLogError, match="anchor .* is missing"):
        _record(log, 1, start=10)  # an open store refuses to write too


def test_an_altered_anchor_is_reported(log, capsys):
    record = json.loads(log.anchor_path.read_text())
    record["head"]["count"] = 2
    record["head"]["last_id"] = 2
    log.anchor_path.write_text(json.dumps(record))
    code, printed = _verify_cli(log.path, capsys)
    assert code == 1 and "its MAC does not verify" in printed
    _refused(log.path)


def test_an_open_store_refuses_to_write_after_newest_rows_were_removed(log):
    _sql(log.path, "DELETE FROM decisions WHERE id = 4", "UPDATE sqlite_sequence SET seq = 3 WHERE name = 'decisions'")
    with pytest.raises(DecisionLogError, match="no longer matches its anchor"):
        _record(log, 1, start=10)
    assert len(log.all_rows()) == 3


def test_the_review_app_shows_the_error_instead_of_a_fresh_log(out, monkeypatch, request):
    from streamlit import config
    from streamlit.testing.v1 import AppTest

    from review_factory import make_triage_out

    address = config.get_option("server.address")
    config.set_option("server.address", "127.0.0.1")  # as `medassist review` serves it (else refused)
    request.addfinalizer(lambda: config.set_option("server.address", address))
    triage = make_triage_out(out.parent)
    store = open_store(triage)
    _record(store, 2)
    os.truncate(store.path, 0)
    monkeypatch.setenv("MEDASSIST_OUT", str(triage))
    monkeypatch.delenv("MEDASSIST_REVIEW_PASSWORD", raising=False)
    monkeypatch.setattr(sys, "argv", ["streamlit_viewer.py"])
    app = Path(__file__).resolve().parents[2] / "apps" / "streamlit_viewer.py"
    at = AppTest.from_file(str(app), default_timeout=120).run()
    errors = " ".join(e.value for e in at.error)
    assert str(store.path) in errors and "deleted, truncated or re-created" in errors
    assert store.path.stat().st_size == 0


def test_an_interrupted_write_verifies_and_is_repaired_on_open(log):
    key = log.key()
    rows = log.all_rows()
    anchored = anchor_mod.read_anchor(log.anchor_path, key)
    previous = anchor_mod.Head(rows[-2].id, rows[-2].row_hash, 3)
    # killed after the commit, before the anchor moved on: the anchor still calls row 4 pending
    anchor_mod.write_anchor(log.anchor_path, key, anchor_mod.Anchor(anchored.log_id, previous, anchored.head))
    assert verify_chain(log.path) == []
    open_store(log.path)
    assert anchor_mod.read_anchor(log.anchor_path, key) == anchor_mod.Anchor(anchored.log_id, anchored.head)
    # killed before the commit: the pending row never reached the database
    ghost = anchor_mod.Head(5, "ab" * 32, 5)
    anchor_mod.write_anchor(log.anchor_path, key, anchor_mod.Anchor(anchored.log_id, anchored.head, ghost))
    assert verify_chain(log.path) == []
    _record(log, 1, start=10)
    assert verify_chain(log.path) == [] and len(log.all_rows()) == 5


def test_rows_are_keyed_and_chained_to_the_log_id(log):
    key = log.key()
    with sqlite3.connect(log.path) as conn:
        log_id = conn.execute("SELECT value FROM chain_meta WHERE name = 'log_id'").fetchone()[0]
    conn.close()
    rows = log.all_rows()
    assert [r.id for r in rows] == [1, 2, 3, 4]
    assert rows[0].prev_hash == genesis_mac(key, log_id)
    for before, row in zip([None] + rows[:-1], rows):
        if before is not None:
            assert row.prev_hash == before.row_hash
        assert row.row_hash == compute_row_mac(key, row.id, row.prev_hash, row.as_dict())
    assert set(COLUMNS) >= {"prev_hash", "row_hash"}
    other_key = bytes(32)
    assert rows[0].row_hash != compute_row_mac(other_key, 1, rows[0].prev_hash, rows[0].as_dict())


def test_files_are_private_and_the_key_lives_outside_the_output_folder(log, out):
    for path in (log.path, Path(str(log.path) + "-wal"), Path(str(log.path) + "-shm"), log.anchor_path, log.key_file):
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o600
    assert out not in log.key_file.parents and out not in log.anchor_path.parents
    assert str(out) not in log.anchor_path.read_text(), "the anchor does not quote the path"


def test_a_loose_existing_database_is_made_private_on_open(log):
    os.chmod(log.path, 0o644)
    open_store(log.path)
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o600


def test_a_key_readable_by_others_is_refused(log):
    os.chmod(log.key_file, 0o644)
    with pytest.raises(DecisionLogError, match="site key"):
        open_store(log.path)
    assert any("chmod 600" in p for p in verify_chain(log.path))


def test_a_key_inside_the_output_folder_is_refused(out):
    with pytest.raises(DecisionLogError, match="inside the output folder"):
        open_store(out, key_file=out / "site.key")
    assert not (out / "site.key").exists() and not (out / "decisions.sqlite").exists()


def test_key_file_option_and_env(tmp_path, out, monkeypatch, capsys):
    chosen = tmp_path / "keys" / "mine.key"
    store = open_store(out, key_file=chosen)
    _record(store, 1)
    assert chosen.is_file() and stat.S_IMODE(chosen.stat().st_mode) == 0o600
    assert store.anchor_path.parent == chosen.parent / "anchors"
    assert main(["audit", "--verify", "--review-db", str(store.path), "--key-file", str(chosen)]) == 0
    assert main(["audit", "--verify", "--review-db", str(store.path)]) == 1  # the default key is another one
    monkeypatch.setenv(KEY_FILE_ENV, str(chosen))
    assert verify_chain(store.path) == []


def test_a_moved_log_verifies_with_its_anchor_given(log, tmp_path, capsys):
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copyfile(log.path, moved / "decisions.sqlite")
    code, printed = _verify_cli(moved / "decisions.sqlite", capsys)
    assert code == 1 and "is missing" in printed
    assert main(["audit", "--verify", "--review-db", str(moved / "decisions.sqlite"),
                 "--anchor", str(log.anchor_path)]) == 0


def test_a_format_1_log_is_reported_as_unkeyed_and_not_upgraded(out, capsys):
    db = out / "decisions.sqlite"
    with sqlite3.connect(db) as conn:
        for statement in _statements(_SCHEMA):
            if "chain_meta" not in statement:
                conn.execute(statement)
        fields = {name: None for name in HASH_COLUMNS} | {
            "study_uid": "1.2.3", "series_uid": "1.2.3.1", "model": "fracture_xray", "model_version": "1.0.0",
            "finding": "fracture", "decision": "accept", "reviewer": "Dr A", "decided_at": "2024-05-01T09:00:00.000000Z",
        }
        row_hash = compute_row_hash("0" * 64, fields)
        conn.execute(f"INSERT INTO decisions ({', '.join(HASH_COLUMNS)}, prev_hash, row_hash) "
                     f"VALUES ({', '.join('?' * (len(HASH_COLUMNS) + 2))})",
                     [fields[n] for n in HASH_COLUMNS] + ["0" * 64, row_hash])
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    before = db.read_bytes()
    code, printed = _verify_cli(db, capsys)
    assert code == 1 and "an unkeyed decision log (format 1" in printed
    assert "row 1" not in printed  # its own chain is consistent; it is reported for being unkeyed
    assert "not upgraded" in _refused(db)
    assert db.read_bytes() == before
