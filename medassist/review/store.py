"""The radiologist's decisions: an append-only SQLite table, chained with a keyed MAC and anchored.

A human decides every finding; this module only records what they decided. Nothing is ever
updated or deleted: a change of mind is a new row, and the latest row (highest ``id``) per
finding is the current decision. A finding is keyed by ``(series_uid, model, model_version,
finding)`` (:data:`FindingKey`).

The table (read by ``medassist.audit`` too, so the column names are a contract)::

    decisions(id INTEGER PRIMARY KEY AUTOINCREMENT, study_uid, series_uid, model, model_version,
              finding, score REAL, threshold REAL, model_flagged INTEGER,
              decision TEXT CHECK(decision IN ('accept','reject','correct')),
              corrected_finding TEXT, location TEXT, comment TEXT, reviewer TEXT NOT NULL,
              decided_at TEXT, prev_hash TEXT, row_hash TEXT)
    chain_meta(name TEXT PRIMARY KEY, value TEXT)   -- log_id: a random id naming this log

* ``location`` is canonical JSON ``{"col":c,"row":r,"slice":i}`` (source pixel indices) or NULL.
* ``decided_at`` is ISO-8601 UTC, e.g. ``2024-05-01T09:30:12.345678Z``.
* Tamper evidence (format 2): ``row_hash`` is an HMAC-SHA256 (:mod:`medassist.review.mac`) under
  a key derived from the site key (:mod:`medassist.keys`, kept outside the output folder) of the
  row's id, ``prev_hash`` and every column of :data:`HASH_COLUMNS` (:func:`compute_row_mac`);
  the first row's ``prev_hash`` is :func:`genesis_mac` of the log id. Ids run 1, 2, 3... without
  gaps.
* The chain's head (last id, last MAC, row count) is anchored outside the database
  (:mod:`medassist.review.anchor`) and updated with every write, so removing the newest rows,
  or truncating, replacing or re-creating the database, is detected too (:func:`verify_chain`).
* Triggers refuse UPDATE and DELETE, so a slip in code cannot overwrite history; someone with
  the file can still drop them, which is what the MAC chain and the anchor are for.
* :func:`open_store` verifies an existing log before it is used and refuses one that fails,
  rather than starting a fresh log over it. Database and anchor files are mode 0600.
* Format 1 logs (an unkeyed sha256 chain, :func:`compute_row_hash`) are not upgraded: they are
  refused by :func:`open_store` and reported as unkeyed by :func:`verify_chain`.

Concurrency: WAL journal, ``busy_timeout``, every write in ``BEGIN IMMEDIATE`` inside an ``flock``
of the anchor's lock file, so concurrent writers - threads or processes - serialise, lose nothing
and never move the anchor backwards. A new connection is opened per operation, so one store object
can be shared between threads (Streamlit sessions).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import secrets
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medassist.atomic import write_atomic
from medassist.errors import MedassistError
from medassist.review import mac
from medassist.review.anchor import (
    EMPTY_HEAD,
    Anchor,
    Head,
    anchor_lock,
    anchor_path_for,
    read_anchor,
    write_anchor,
)
from medassist.sanitize import csv_writer

log = logging.getLogger(__name__)

DEFAULT_DB_NAME = "decisions.sqlite"
DECISIONS = ("accept", "reject", "correct")
GENESIS_HASH = "0" * 64  # format 1 (unkeyed) logs only
BUSY_TIMEOUT_MS = 30_000
SCHEMA_VERSION = 2  # 2: keyed MAC chain + anchor; 1: unkeyed sha256 chain (legacy, read-only)
LEGACY_SCHEMA_VERSION = 1
TRIGGERS = ("decisions_no_update", "decisions_no_delete")
MAX_ROW_PROBLEMS = 20

COLUMNS: tuple[str, ...] = (
    "id",
    "study_uid",
    "series_uid",
    "model",
    "model_version",
    "finding",
    "score",
    "threshold",
    "model_flagged",
    "decision",
    "corrected_finding",
    "location",
    "comment",
    "reviewer",
    "decided_at",
    "prev_hash",
    "row_hash",
)
# What the MAC covers besides the id and prev_hash: every column but the id and the two MACs.
HASH_COLUMNS: tuple[str, ...] = COLUMNS[1:-2]

FindingKey = tuple[str, str, str, str]  # (series_uid, model, model_version, finding)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    model TEXT NOT NULL,
    model_version TEXT NOT NULL,
    finding TEXT NOT NULL,
    score REAL,
    threshold REAL,
    model_flagged INTEGER,
    decision TEXT NOT NULL CHECK(decision IN ('accept','reject','correct')),
    corrected_finding TEXT,
    location TEXT,
    comment TEXT,
    reviewer TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    row_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chain_meta(name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS decisions_by_finding
    ON decisions(series_uid, model, model_version, finding, id);
CREATE INDEX IF NOT EXISTS decisions_by_study ON decisions(study_uid, id);
CREATE TRIGGER IF NOT EXISTS decisions_no_update BEFORE UPDATE ON decisions
BEGIN SELECT RAISE(ABORT, 'decisions are append-only: record a new decision instead'); END;
CREATE TRIGGER IF NOT EXISTS decisions_no_delete BEFORE DELETE ON decisions
BEGIN SELECT RAISE(ABORT, 'decisions are append-only: they cannot be deleted'); END;
"""


class DecisionLogError(MedassistError):
    """A decision log that fails verification, or that medassist will not open or write."""


@dataclass(frozen=True)
class Decision:
    """One stored row of the decisions table."""

    id: int
    study_uid: str
    series_uid: str
    model: str
    model_version: str
    finding: str
    score: float | None
    threshold: float | None
    model_flagged: int | None
    decision: str
    corrected_finding: str | None
    location: str | None
    comment: str | None
    reviewer: str
    decided_at: str
    prev_hash: str
    row_hash: str

    @property
    def key(self) -> FindingKey:
        return (self.series_uid, self.model, self.model_version, self.finding)

    @property
    def location_dict(self) -> dict[str, int] | None:
        """``{"slice": i, "row": r, "col": c}`` or None."""
        return json.loads(self.location) if self.location else None

    @property
    def final_finding(self) -> str:
        """The finding label the reviewer settled on (the corrected one when corrected)."""
        return self.corrected_finding or self.finding

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in COLUMNS}


def default_db_path(out_dir: str | os.PathLike[str]) -> Path:
    """Where the decisions of a triage output folder live: ``OUT/decisions.sqlite``."""
    return Path(out_dir) / DEFAULT_DB_NAME


def utc_now_iso() -> str:
    """Now, as ISO-8601 UTC with microseconds and a ``Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def compute_row_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    """Format 1 (unkeyed, legacy): sha256 of ``prev_hash`` + the canonical JSON of the hashed columns."""
    payload = {name: fields[name] for name in HASH_COLUMNS}
    return hashlib.sha256((prev_hash + canonical_json(payload)).encode("utf-8")).hexdigest()


def genesis_mac(key: bytes, log_id: str) -> str:
    """The first row's ``prev_hash``: binds the chain to its log id."""
    return mac.mac_hex(key, b"medassist-decisions-genesis-v2\x00" + log_id.encode("utf-8"))


def compute_row_mac(key: bytes, row_id: int, prev_mac: str, fields: Mapping[str, Any]) -> str:
    """HMAC-SHA256 of the row's id, ``prev_mac`` and hashed columns (canonical JSON)."""
    payload = {"id": int(row_id), "prev": prev_mac, "row": {name: fields[name] for name in HASH_COLUMNS}}
    return mac.mac_hex(key, b"medassist-decision-v2\x00" + canonical_json(payload).encode("utf-8"))


def open_store(
    path: str | os.PathLike[str],
    *,
    key_file: str | os.PathLike[str] | None = None,
    anchor_file: str | os.PathLike[str] | None = None,
) -> "DecisionStore":
    """Open the decisions database at ``path``, verified; a new one is created when there is none.

    ``path`` may also be a triage output folder, meaning ``path/decisions.sqlite``. Raises
    DecisionLogError, naming the file, when the log fails verification (edited, shortened,
    truncated, replaced, anchor missing) or is an unkeyed format 1 log.
    """
    target = Path(path)
    if target.is_dir():
        target = default_db_path(target)
    if not target.parent.is_dir():
        raise MedassistError(f"{target}: cannot create the decisions database, folder {target.parent} does not exist")
    store = DecisionStore(target, key_file=key_file, anchor_file=anchor_file)
    store._open()
    return store


@dataclass
class _DbState:
    """What is in a database file, read once: kind is missing, empty, foreign, unreadable, legacy or keyed."""

    kind: str
    rows: list[sqlite3.Row] = field(default_factory=list)
    seq: int | None = None
    triggers: set[str] = field(default_factory=set)
    log_id: str | None = None
    user_version: int = 0
    error: str = ""

    @property
    def head(self) -> Head:
        if not self.rows:
            return EMPTY_HEAD
        return Head(int(self.rows[-1]["id"]), str(self.rows[-1]["row_hash"]), len(self.rows))

    @property
    def unused(self) -> bool:
        """Nothing was ever recorded here: no table, or an empty one whose counter never moved."""
        return self.kind in ("missing", "empty") or (self.kind == "legacy" and not self.rows and not self.seq)


class DecisionStore:
    """The decisions database at one path. Cheap to keep; opens a connection per operation.

    ``key_file`` (the site key, :mod:`medassist.keys`) defaults to ``$MEDASSIST_KEY_FILE`` or
    ``~/.config/medassist/site.key``; ``anchor_file`` to the anchor folder beside the key
    (:func:`medassist.review.anchor.anchor_path_for`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        key_file: str | os.PathLike[str] | None = None,
        anchor_file: str | os.PathLike[str] | None = None,
    ):
        self.path = Path(path)
        self.key_file = mac.key_file_path(key_file)
        self.anchor_path = anchor_path_for(self.path, self.key_file, anchor_file)
        self.journal_mode = ""
        self._key: bytes | None = None

    def __repr__(self) -> str:
        return f"DecisionStore({str(self.path)!r})"

    # -- connections -------------------------------------------------------------------------

    @contextlib.contextmanager
    def connect(self, *, readonly: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection in autocommit mode (transactions are explicit), closed afterwards.

        Never creates the file (:func:`open_store` does, with mode 0600).
        """
        with _connect(self.path, readonly=readonly) as conn:
            yield conn

    def key(self) -> bytes:
        """The decision log's key, derived from the site key (read once)."""
        if self._key is None:
            self._key = mac.log_key(self.key_file)
        return self._key

    def _open(self) -> None:
        """Verify the log and repair an interrupted write's anchor, or create a new log."""
        _refuse_inside(self.path.parent, self.key_file, "the site key")
        _refuse_inside(self.path.parent, self.anchor_path, "the decision log's anchor")
        with anchor_lock(self.anchor_path):
            state = _inspect(self.path)
            if state.unused:
                self._start(state)
            elif state.kind == "legacy":
                raise DecisionLogError(
                    f"{self.path}: an unkeyed decision log from an earlier medassist (format "
                    f"{LEGACY_SCHEMA_VERSION}); it is not upgraded, since nothing proves its rows untouched. "
                    "Check it with `medassist audit --verify`, keep it read-only as the record it is, and move it "
                    "aside (e.g. decisions.format1.sqlite) to start a keyed log"
                )
            elif state.kind in ("foreign", "unreadable"):
                raise DecisionLogError(f"{self.path}: not a usable decisions database: {state.error}")
            elif state.user_version > SCHEMA_VERSION:
                raise DecisionLogError(
                    f"{self.path}: decisions format {state.user_version} is newer than this medassist "
                    f"understands ({SCHEMA_VERSION})"
                )
            else:
                self._check_existing(state)
        _make_private(self.path)

    def _check_existing(self, state: _DbState) -> None:
        """Refuse a keyed log that fails verification; settle an interrupted write's anchor."""
        if not self.key_file.exists():
            raise DecisionLogError(
                f"{self.path}: the site key {self.key_file} is missing, so this log cannot be verified; "
                "restore the key (a new key would not verify it)"
            )
        problems = self._problems(state)
        if problems:
            shown = "; ".join(problems[:5]) + (f"; ... {len(problems) - 5} more" if len(problems) > 5 else "")
            raise DecisionLogError(
                f"{self.path}: the decision log fails verification, refusing to open it "
                f"(and to start a fresh one over it): {shown}. Full report: medassist audit --verify "
                f"--review-db {self.path}"
            )
        anchor = read_anchor(self.anchor_path, self.key())
        if anchor is not None and anchor.pending is not None:  # a writer died mid-write: the head verified
            write_anchor(self.anchor_path, self.key(), Anchor(anchor.log_id, state.head))
        with self.connect() as conn:
            self.journal_mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()

    def _start(self, state: _DbState) -> None:
        """A new log: key (created on first use), anchor, then schema. Refuses when an anchor says
        that decisions were recorded here (the database was deleted, truncated or re-created)."""
        anchor = read_anchor(self.anchor_path, mac.log_key(self.key_file)) if self.anchor_path.exists() else None
        if anchor is not None and anchor.head.count:
            what = {"missing": "is missing", "empty": "is empty (truncated?)"}.get(state.kind, "has no decisions")
            raise DecisionLogError(
                f"{self.path}: the database {what} but its anchor {self.anchor_path} records "
                f"{anchor.head.describe()}: it was deleted, truncated or re-created. Restore it from a backup; "
                "medassist will not start a fresh log over it"
            )
        key = mac.log_key(self.key_file, create=True)
        self._key = key
        if anchor is None:
            anchor = Anchor(secrets.token_hex(16), EMPTY_HEAD)
            write_anchor(self.anchor_path, key, anchor)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        with self.connect() as conn:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                conn.execute("BEGIN IMMEDIATE")
                for statement in _statements(_SCHEMA):
                    conn.execute(statement)
                conn.execute("INSERT OR REPLACE INTO chain_meta(name, value) VALUES ('log_id', ?)", (anchor.log_id,))
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise MedassistError(f"{self.path}: not a usable decisions database: {exc}") from exc
            # "wal" unless the file system cannot share memory; still correct, only less concurrent.
            self.journal_mode = str(mode).lower()

    # -- writing -----------------------------------------------------------------------------

    def record_decision(
        self,
        *,
        study_uid: str,
        series_uid: str,
        model: str,
        model_version: str,
        finding: str,
        score: float | None,
        threshold: float | None,
        model_flagged: bool | int | None,
        decision: str,
        reviewer: str,
        corrected_finding: str | None = None,
        location: Mapping[str, int] | None = None,
        comment: str | None = None,
        decided_at: str | None = None,
    ) -> Decision:
        """Append one decision and return the stored row.

        ``decision`` is accept, reject or correct; a correction names a ``corrected_finding`` or a
        ``location`` (or both). ``reviewer`` is required. Raises MedassistError on bad input, and
        DecisionLogError when the database's head no longer matches its anchor.
        """
        fields = _validated(
            study_uid=study_uid,
            series_uid=series_uid,
            model=model,
            model_version=model_version,
            finding=finding,
            score=score,
            threshold=threshold,
            model_flagged=model_flagged,
            decision=decision,
            reviewer=reviewer,
            corrected_finding=corrected_finding,
            location=location,
            comment=comment,
            decided_at=decided_at,
        )
        key = self.key()
        placeholders = ", ".join("?" for _ in HASH_COLUMNS)
        with anchor_lock(self.anchor_path), self.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")  # take the write lock before reading the chain's head
            try:
                anchor = self._anchor_for_write(conn, key)
                head = _head_of(conn)
                prev_mac = head.last_mac if head.count else genesis_mac(key, anchor.log_id)
                new_id = head.last_id + 1
                row_mac = compute_row_mac(key, new_id, prev_mac, fields)
                conn.execute(
                    f"INSERT INTO decisions (id, {', '.join(HASH_COLUMNS)}, prev_hash, row_hash) "
                    f"VALUES (?, {placeholders}, ?, ?)",
                    [new_id] + [fields[name] for name in HASH_COLUMNS] + [prev_mac, row_mac],
                )
                new_head = Head(new_id, row_mac, head.count + 1)
                write_anchor(self.anchor_path, key, Anchor(anchor.log_id, head, pending=new_head))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            write_anchor(self.anchor_path, key, Anchor(anchor.log_id, new_head))
        return Decision(id=new_id, prev_hash=prev_mac, row_hash=row_mac, **fields)

    def _anchor_for_write(self, conn: sqlite3.Connection, key: bytes) -> Anchor:
        """The anchor, checked against the database's head; DecisionLogError when they disagree."""
        try:
            meta = conn.execute("SELECT value FROM chain_meta WHERE name = 'log_id'").fetchone()
        except sqlite3.DatabaseError:
            meta = None
        if meta is None:
            raise DecisionLogError(f"{self.path}: not a keyed decision log (open it with open_store)")
        anchor = read_anchor(self.anchor_path, key)
        if anchor is None:
            raise DecisionLogError(f"{self.path}: its anchor {self.anchor_path} is missing; refusing to write")
        head = _head_of(conn)
        if anchor.log_id != meta[0] or not anchor.accepts(head):
            raise DecisionLogError(
                f"{self.path}: the database ({head.describe()}) no longer matches its anchor "
                f"({anchor.head.describe()}); it was changed outside medassist. Refusing to write; run "
                f"medassist audit --verify --review-db {self.path}"
            )
        return anchor

    # -- reading -----------------------------------------------------------------------------

    def all_rows(self) -> list[Decision]:
        """Every row, oldest first."""
        with self.connect() as conn:
            return [_decision(row) for row in conn.execute("SELECT * FROM decisions ORDER BY id")]

    def current_decisions(self, study_uid: str | None = None) -> dict[FindingKey, Decision]:
        """The latest decision per finding (optionally of one study), keyed by FindingKey."""
        sql = (
            "SELECT * FROM decisions WHERE id IN (SELECT MAX(id) FROM decisions {where} "
            "GROUP BY series_uid, model, model_version, finding) ORDER BY id"
        )
        with self.connect() as conn:
            if study_uid is None:
                rows = conn.execute(sql.format(where=""))
            else:
                rows = conn.execute(sql.format(where="WHERE study_uid = ?"), (study_uid,))
            return {decision.key: decision for decision in map(_decision, rows)}

    def current_decision(self, key: FindingKey) -> Decision | None:
        """The latest decision for one finding, or None when nobody decided it yet."""
        with self.connect() as conn:
            row = conn.execute(
                "SELECT * FROM decisions WHERE series_uid = ? AND model = ? AND model_version = ? "
                "AND finding = ? ORDER BY id DESC LIMIT 1",
                tuple(key),
            ).fetchone()
        return _decision(row) if row else None

    def history(self, finding_key: FindingKey) -> list[Decision]:
        """Every decision recorded for one finding, oldest first."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT * FROM decisions WHERE series_uid = ? AND model = ? AND model_version = ? "
                "AND finding = ? ORDER BY id",
                tuple(finding_key),
            )
            return [_decision(row) for row in rows]

    def study_status(
        self,
        finding_keys: Iterable[FindingKey],
        current: Mapping[FindingKey, Decision] | None = None,
    ) -> str:
        """"reviewed" when every finding of a study has a decision, "in progress" when some do,
        "unreviewed" when none do, "no findings" when the study has nothing to decide.

        The study's findings come from the worklist (the store only knows what was decided);
        pass ``current`` (from :meth:`current_decisions`) to avoid a query per study.
        """
        decided = self.current_decisions() if current is None else current
        return status_of(finding_keys, decided)

    # -- export ------------------------------------------------------------------------------

    def to_csv(self, *, current_only: bool = False) -> str:
        """The decisions as CSV text with the table's columns (all rows, or the current ones); text
        that a spreadsheet would run as a formula is neutralised (``sanitize.csv_writer``)."""
        rows = list(self.current_decisions().values()) if current_only else self.all_rows()
        buffer = io.StringIO()
        writer = csv_writer(buffer)
        writer.writerow(COLUMNS)
        for decision in rows:
            writer.writerow(["" if value is None else value for value in (getattr(decision, c) for c in COLUMNS)])
        return buffer.getvalue()

    def export_csv(self, path: str | os.PathLike[str], *, current_only: bool = False) -> Path:
        """Write :meth:`to_csv` to ``path`` atomically, owner-only (``atomic.write_atomic``); returns the path."""
        target = Path(path)
        text = self.to_csv(current_only=current_only)
        return write_atomic(target, text, private=True)

    def head(self) -> str:
        """The last row's MAC ("" when empty); the anchor keeps it outside the file."""
        return self.chain_head().last_mac

    def chain_head(self) -> Head:
        """Last id, last MAC and row count of the database as it is."""
        with self.connect(readonly=True) as conn:
            return _head_of(conn)

    # -- verification ------------------------------------------------------------------------

    def verify_chain(self) -> list[str]:
        """The problems found in this log (empty when it verifies): see :func:`verify_chain`."""
        with anchor_lock(self.anchor_path, create=False):
            state = _inspect(self.path)
            if state.kind == "missing" and not self.anchor_path.exists():
                raise MedassistError(f"{self.path}: no decisions database there")
            return self._problems(state)

    def _problems(self, state: _DbState) -> list[str]:
        """Everything wrong with ``state`` measured against the key and the anchor."""
        if state.kind == "legacy":
            return _legacy_problems(self.path, state)
        try:
            key = self.key()
        except MedassistError as exc:
            return [f"{self.path}: cannot verify the log without its site key: {exc}"]
        try:
            anchor = read_anchor(self.anchor_path, key)
        except MedassistError as exc:
            return [str(exc)]
        if state.kind != "keyed":
            return _gone_problems(self.path, state, anchor, self.anchor_path)
        problems: list[str] = []
        if anchor is None:
            problems.append(
                f"{self.path}: its anchor {self.anchor_path} is missing, so removed or replaced rows cannot be "
                "ruled out (anchor deleted, or the log was moved: pass --anchor FILE)"
            )
            log_id = state.log_id or ""
        else:
            log_id = anchor.log_id
            if state.log_id != anchor.log_id:
                problems.append(
                    f"{self.path}: the database belongs to another decision log than its anchor "
                    f"{self.anchor_path} (the database was replaced or re-created)"
                )
        problems += _row_problems(state.rows, key, genesis_mac(key, log_id))
        head = state.head
        if anchor is not None and not anchor.accepts(head):
            problems.append(_head_problem(self.path, head, anchor))
        if state.seq is not None and state.seq > head.last_id:
            problems.append(
                f"{self.path}: rows after id {head.last_id} are missing (ids were issued up to {state.seq}): "
                "the newest rows were removed"
            )
        for trigger in TRIGGERS:
            if trigger not in state.triggers:
                problems.append(f"{self.path}: the guard trigger {trigger} was dropped")
        return problems


def status_of(finding_keys: Iterable[FindingKey], decided: Mapping[FindingKey, Any]) -> str:
    """Review status of a set of findings given the current decisions (see study_status)."""
    keys = set(finding_keys)
    if not keys:
        return "no findings"
    done = sum(1 for key in keys if key in decided)
    if done == len(keys):
        return "reviewed"
    return "in progress" if done else "unreviewed"


def verify_chain(
    db: "DecisionStore | str | os.PathLike[str]",
    *,
    key_file: str | os.PathLike[str] | None = None,
    anchor_file: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Check a decision log; returns the problems found (empty when it verifies).

    Reports an edited, inserted, reordered or removed row (MAC chain, ids without gaps), removed
    newest rows and a database that was truncated, replaced or re-created (the anchor), a missing
    or altered anchor, dropped guard triggers, and an unkeyed format 1 log as such. Raises
    MedassistError only when there is neither a database nor an anchor for it.
    """
    if isinstance(db, DecisionStore):
        return db.verify_chain()
    path = Path(db)
    if path.is_dir():
        path = default_db_path(path)
    return DecisionStore(path, key_file=key_file, anchor_file=anchor_file).verify_chain()


def _inspect(path: Path) -> _DbState:
    """Read everything verification needs from the database at ``path``, read-only."""
    if not path.exists():
        return _DbState("missing")
    try:
        if path.stat().st_size == 0:
            return _DbState("empty")
        with _connect(path, readonly=True) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                return _DbState("empty")
            if "decisions" not in tables:
                return _DbState("foreign", error="it has no decisions table")
            state = _DbState("keyed" if "chain_meta" in tables else "legacy")
            state.rows = conn.execute("SELECT * FROM decisions ORDER BY id").fetchall()
            seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'decisions'").fetchone()
            state.seq = None if seq is None or seq[0] is None else int(seq[0])
            state.triggers = {
                row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            }
            state.user_version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if state.kind == "keyed":
                meta = conn.execute("SELECT value FROM chain_meta WHERE name = 'log_id'").fetchone()
                state.log_id = None if meta is None else str(meta[0])
            return state
    except (sqlite3.DatabaseError, MedassistError, OSError) as exc:
        return _DbState("unreadable", error=str(exc))


@contextlib.contextmanager
def _connect(path: Path, *, readonly: bool = False) -> Iterator[sqlite3.Connection]:
    """An autocommit connection to an existing database file (``mode=rw`` or ``ro``: never creates it)."""
    uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode={'ro' if readonly else 'rw'}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except sqlite3.Error as exc:
        raise MedassistError(f"{path}: cannot open the decisions database: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.row_factory = sqlite3.Row
        yield conn
    finally:
        conn.close()


def _head_of(conn: sqlite3.Connection) -> Head:
    """The database's head: last id and MAC, and the number of rows."""
    last = conn.execute("SELECT id, row_hash FROM decisions ORDER BY id DESC LIMIT 1").fetchone()
    if last is None:
        return EMPTY_HEAD
    count = conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
    return Head(int(last[0]), str(last[1]), int(count))


def _row_problems(rows: list[sqlite3.Row], key: bytes, genesis: str) -> list[str]:
    """MAC chain and id sequence of the rows, oldest first (at most MAX_ROW_PROBLEMS messages)."""
    problems: list[str] = []
    expected_prev = genesis
    for position, row in enumerate(rows, start=1):
        if row["id"] != position:
            problems.append(f"row {row['id']}: expected id {position} (rows before it were removed or inserted)")
        if not mac.same_mac(row["prev_hash"], expected_prev):
            problems.append(
                f"row {row['id']}: prev_hash does not match the previous row's MAC "
                "(a row before it was removed, inserted or reordered)"
            )
        try:
            fields = {name: row[name] for name in HASH_COLUMNS}
            recomputed = compute_row_mac(key, row["id"], str(row["prev_hash"]), fields)
        except (TypeError, ValueError, IndexError) as exc:
            problems.append(f"row {row['id']}: contents cannot be checked ({exc})")
        else:
            if not mac.same_mac(recomputed, row["row_hash"]):
                problems.append(
                    f"row {row['id']}: its MAC does not match its contents (the row was edited, or not "
                    "written by medassist with this site key)"
                )
        expected_prev = row["row_hash"]
    if len(problems) > MAX_ROW_PROBLEMS:
        problems = problems[:MAX_ROW_PROBLEMS] + [f"... and {len(problems) - MAX_ROW_PROBLEMS} more row problems"]
    return problems


def _head_problem(path: Path, head: Head, anchor: Anchor) -> str:
    """Why the database's head and the anchored head differ, in words."""
    said = f"{path}: the database holds {head.describe()} but its anchor records {anchor.head.describe()}"
    if head.count < anchor.head.count:
        return said + ": the newest decisions were deleted, or the database was replaced by an older copy"
    if head.count > anchor.head.count:
        return said + ": rows were added outside medassist, or the anchor was replaced by an older copy"
    return said + " with another last row: the database was replaced or rewritten"


def _gone_problems(path: Path, state: _DbState, anchor: Anchor | None, anchor_path: Path) -> list[str]:
    """Problems of a database that is missing, empty, unreadable or not a decision log."""
    what = {
        "missing": "is missing",
        "empty": "is empty (truncated, or re-created)",
        "foreign": f"is not a decision log ({state.error})",
        "unreadable": f"cannot be read ({state.error})",
    }[state.kind]
    if anchor is None:
        return [f"{path}: the database {what}, and there is no anchor for it at {anchor_path}"]
    if not anchor.head.count and state.kind in ("missing", "empty"):
        return []  # the anchor says nothing was recorded yet
    return [f"{path}: the database {what} but its anchor {anchor_path} records {anchor.head.describe()}"]


def _legacy_problems(path: Path, state: _DbState) -> list[str]:
    """A format 1 log: always reported as unkeyed, with what its sha256 chain shows."""
    problems = [
        f"{path}: an unkeyed decision log (format {LEGACY_SCHEMA_VERSION}, sha256 chain, no anchor): anyone who "
        "could write the file could have rewritten it and recomputed the chain, so it cannot be verified; "
        "keep it read-only and start a keyed log"
    ]
    expected_prev = GENESIS_HASH
    last_id = 0
    for row in state.rows:
        if row["prev_hash"] != expected_prev:
            problems.append(f"row {row['id']}: prev_hash does not match the previous row's hash (format 1 chain)")
        try:
            recomputed = compute_row_hash(row["prev_hash"] or "", {name: row[name] for name in HASH_COLUMNS})
        except (TypeError, ValueError):
            recomputed = None
        if recomputed != row["row_hash"]:
            problems.append(f"row {row['id']}: row_hash does not match its contents (format 1 chain)")
        expected_prev = row["row_hash"]
        last_id = row["id"]
    if state.seq is not None and state.seq > last_id:
        problems.append(f"rows after id {last_id} are missing (ids were issued up to {state.seq}) (format 1 chain)")
    return problems


def _refuse_inside(folder: Path, path: Path, what: str) -> None:
    """The key and the anchor must not live in the output folder they protect."""
    if folder.resolve() in path.resolve().parents:
        raise DecisionLogError(
            f"{path}: {what} is inside the output folder {folder}, where anyone who can write the decisions can "
            "reach it too; keep it elsewhere (MEDASSIST_KEY_FILE, MEDASSIST_ANCHOR_DIR)"
        )


def _make_private(db: Path) -> None:
    """Mode 0600 for the database and its WAL files (owner only)."""
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        try:
            if path.exists() and path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)
        except OSError as exc:
            log.warning("%s: cannot make it private (mode 0600): %s", path, exc.strerror or exc)


# -- helpers ---------------------------------------------------------------------------------


def _statements(script: str) -> list[str]:
    """Split the schema into statements (triggers contain ';' inside BEGIN ... END)."""
    statements, current = [], []
    for line in script.strip().splitlines():
        current.append(line)
        joined = "\n".join(current).strip()
        if joined.endswith(";") and sqlite3.complete_statement(joined):
            statements.append(joined)
            current = []
    if "\n".join(current).strip():
        statements.append("\n".join(current).strip())
    return statements


def _decision(row: sqlite3.Row) -> Decision:
    return Decision(**{name: row[name] for name in COLUMNS})


def _text(name: str, value: Any, *, required: bool = True) -> str | None:
    if value is None:
        if required:
            raise MedassistError(f"decision: {name} is required")
        return None
    if not isinstance(value, str):
        value = str(value)
    value = value.strip()
    if required and not value:
        raise MedassistError(f"decision: {name} is required")
    return value or None


def _number(name: str, value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise MedassistError(f"decision: {name} {value!r} is not a number") from exc
    if not math.isfinite(number):
        raise MedassistError(f"decision: {name} {value!r} is not a finite number")
    return number


def _location(value: Mapping[str, Any] | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise MedassistError(f"decision: location must be a mapping with slice, row and col, got {value!r}")
    keys = {"slice", "row", "col"}
    if set(value) != keys:
        raise MedassistError(f"decision: location needs exactly slice, row and col, got {sorted(value)}")
    clean: dict[str, int] = {}
    for name in ("slice", "row", "col"):
        item = value[name]
        try:
            whole = not isinstance(item, bool) and float(item).is_integer() and int(item) >= 0
        except (TypeError, ValueError):
            whole = False
        if not whole:
            raise MedassistError(f"decision: location {name} must be a non-negative integer, got {item!r}")
        clean[name] = int(item)
    return canonical_json(clean)


def _timestamp(value: str | None) -> str:
    if value is None:
        return utc_now_iso()
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise MedassistError(f"decision: decided_at {value!r} is not an ISO-8601 time") from exc
    if parsed.tzinfo is None:
        raise MedassistError(f"decision: decided_at {value!r} has no time zone")
    return parsed.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _validated(**raw: Any) -> dict[str, Any]:
    decision = _text("decision", raw["decision"])
    if decision not in DECISIONS:
        raise MedassistError(f"decision: {decision!r} is not one of {', '.join(DECISIONS)}")
    flagged = raw["model_flagged"]
    if flagged is not None:
        flagged = 1 if bool(flagged) else 0
    fields = {
        "study_uid": _text("study_uid", raw["study_uid"]),
        "series_uid": _text("series_uid", raw["series_uid"]),
        "model": _text("model", raw["model"]),
        "model_version": _text("model_version", raw["model_version"], required=False) or "",
        "finding": _text("finding", raw["finding"]),
        "score": _number("score", raw["score"]),
        "threshold": _number("threshold", raw["threshold"]),
        "model_flagged": flagged,
        "decision": decision,
        "corrected_finding": _text("corrected_finding", raw["corrected_finding"], required=False),
        "location": _location(raw["location"]),
        "comment": _text("comment", raw["comment"], required=False),
        "reviewer": _text("reviewer", raw["reviewer"]),
        "decided_at": _timestamp(raw["decided_at"]),
    }
    if decision == "correct":
        if fields["corrected_finding"] is None and fields["location"] is None:
            raise MedassistError("decision: a correction needs a corrected finding or a location")
        if fields["corrected_finding"] == fields["finding"] and fields["location"] is None:
            raise MedassistError("decision: a correction must change the finding or mark a location")
    elif fields["corrected_finding"] is not None:
        raise MedassistError(f"decision: a corrected finding only goes with 'correct', not {decision!r}")
    return fields
