"""The radiologist's decisions: an append-only, hash-chained SQLite table.

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

* ``location`` is canonical JSON ``{"col":c,"row":r,"slice":i}`` (source pixel indices) or NULL.
* ``decided_at`` is ISO-8601 UTC, e.g. ``2024-05-01T09:30:12.345678Z``.
* Tamper evidence: ``row_hash = sha256(prev_hash + canonical_json(fields)).hexdigest()`` where
  ``fields`` maps every column of :data:`HASH_COLUMNS` to its stored value, canonical JSON is
  ``json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` and the
  first row's ``prev_hash`` is :data:`GENESIS_HASH` (64 zeros). :func:`verify_chain` recomputes it.
  A chain without an external anchor cannot reveal that the *last* rows were removed and the
  rest left intact; compare :meth:`DecisionStore.head` with a copy kept elsewhere for that.
* Triggers refuse UPDATE and DELETE, so a slip in code cannot overwrite history; someone with
  the file can still drop them, which is what the chain is for.

Concurrency: WAL journal, ``busy_timeout``, and every write in ``BEGIN IMMEDIATE`` (the write lock
is taken before the previous row's hash is read), so concurrent writers - threads or processes -
serialise and lose nothing. A new connection is opened per operation, so one store object can be
shared between threads (Streamlit sessions).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medassist.errors import MedassistError
from medassist.sanitize import csv_writer

DEFAULT_DB_NAME = "decisions.sqlite"
DECISIONS = ("accept", "reject", "correct")
GENESIS_HASH = "0" * 64
BUSY_TIMEOUT_MS = 30_000
SCHEMA_VERSION = 1

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
# What row_hash covers (besides prev_hash): every column but the id and the two hashes.
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
CREATE INDEX IF NOT EXISTS decisions_by_finding
    ON decisions(series_uid, model, model_version, finding, id);
CREATE INDEX IF NOT EXISTS decisions_by_study ON decisions(study_uid, id);
CREATE TRIGGER IF NOT EXISTS decisions_no_update BEFORE UPDATE ON decisions
BEGIN SELECT RAISE(ABORT, 'decisions are append-only: record a new decision instead'); END;
CREATE TRIGGER IF NOT EXISTS decisions_no_delete BEFORE DELETE ON decisions
BEGIN SELECT RAISE(ABORT, 'decisions are append-only: they cannot be deleted'); END;
"""


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
    """sha256 of ``prev_hash`` followed by the canonical JSON of the hashed columns."""
    payload = {name: fields[name] for name in HASH_COLUMNS}
    return hashlib.sha256((prev_hash + canonical_json(payload)).encode("utf-8")).hexdigest()


def open_store(path: str | os.PathLike[str]) -> "DecisionStore":
    """Open (creating if needed) the decisions database at ``path``.

    ``path`` may also be a triage output folder, meaning ``path/decisions.sqlite``.
    """
    target = Path(path)
    if target.is_dir():
        target = default_db_path(target)
    if not target.parent.is_dir():
        raise MedassistError(f"{target}: cannot create the decisions database, folder {target.parent} does not exist")
    store = DecisionStore(target)
    store._initialise()
    return store


class DecisionStore:
    """The decisions database at one path. Cheap to keep; opens a connection per operation."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.journal_mode = ""

    def __repr__(self) -> str:
        return f"DecisionStore({str(self.path)!r})"

    # -- connections -------------------------------------------------------------------------

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in autocommit mode (transactions are explicit), closed afterwards."""
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except sqlite3.Error as exc:
            raise MedassistError(f"{self.path}: cannot open the decisions database: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.row_factory = sqlite3.Row
            yield conn
        finally:
            conn.close()

    def _initialise(self) -> None:
        with self.connect() as conn:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                conn.execute("BEGIN IMMEDIATE")
                for statement in _statements(_SCHEMA):
                    conn.execute(statement)
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                elif version > SCHEMA_VERSION:
                    raise MedassistError(
                        f"{self.path}: decisions schema version {version} is newer than this medassist "
                        f"understands ({SCHEMA_VERSION})"
                    )
                conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise MedassistError(f"{self.path}: not a usable decisions database: {exc}") from exc
            # "wal" unless the file system cannot share memory; still correct, only less concurrent.
            self.journal_mode = str(mode).lower()
            missing = set(COLUMNS) - {row[1] for row in conn.execute("PRAGMA table_info(decisions)")}
            if missing:
                raise MedassistError(f"{self.path}: decisions table lacks columns {sorted(missing)}")

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
        ``location`` (or both). ``reviewer`` is required. Raises MedassistError on bad input.
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
        placeholders = ", ".join("?" for _ in HASH_COLUMNS)
        with self.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")  # take the write lock before reading the chain's head
            try:
                last = conn.execute("SELECT row_hash FROM decisions ORDER BY id DESC LIMIT 1").fetchone()
                prev_hash = last[0] if last else GENESIS_HASH
                row_hash = compute_row_hash(prev_hash, fields)
                cursor = conn.execute(
                    f"INSERT INTO decisions ({', '.join(HASH_COLUMNS)}, prev_hash, row_hash) "
                    f"VALUES ({placeholders}, ?, ?)",
                    [fields[name] for name in HASH_COLUMNS] + [prev_hash, row_hash],
                )
                new_id = cursor.lastrowid
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return Decision(id=int(new_id), prev_hash=prev_hash, row_hash=row_hash, **fields)

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

    def head(self) -> str:
        """The last row's hash (GENESIS_HASH when empty): an anchor to keep outside the file."""
        with self.connect() as conn:
            row = conn.execute("SELECT row_hash FROM decisions ORDER BY id DESC LIMIT 1").fetchone()
        return row[0] if row else GENESIS_HASH

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
        """Write :meth:`to_csv` to ``path`` atomically (temp file + rename); returns the path."""
        target = Path(path)
        text = self.to_csv(current_only=current_only)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return target

    def verify_chain(self) -> list[str]:
        return verify_chain(self)


def status_of(finding_keys: Iterable[FindingKey], decided: Mapping[FindingKey, Any]) -> str:
    """Review status of a set of findings given the current decisions (see study_status)."""
    keys = set(finding_keys)
    if not keys:
        return "no findings"
    done = sum(1 for key in keys if key in decided)
    if done == len(keys):
        return "reviewed"
    return "in progress" if done else "unreviewed"


def verify_chain(db: "DecisionStore | str | os.PathLike[str]") -> list[str]:
    """Recompute the hash chain; returns the problems found (empty when intact).

    Detects an edited row (its hash no longer matches its contents), a removed, inserted or
    reordered row (the next row's ``prev_hash`` no longer matches), and removed trailing rows
    when SQLite's AUTOINCREMENT counter is ahead of the last id.
    """
    if isinstance(db, DecisionStore):
        store = db
    else:
        path = Path(db)
        if path.is_dir():
            path = default_db_path(path)
        if not path.is_file():
            raise MedassistError(f"{path}: no decisions database there")
        store = DecisionStore(path)
    problems: list[str] = []
    with store.connect() as conn:
        try:
            rows = conn.execute("SELECT * FROM decisions ORDER BY id").fetchall()
            seq_row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'decisions'").fetchone()
        except sqlite3.DatabaseError as exc:
            return [f"{store.path}: cannot read the decisions table: {exc}"]
    expected_prev = GENESIS_HASH
    last_id = 0
    for row in rows:
        fields = {name: row[name] for name in HASH_COLUMNS}
        if row["prev_hash"] != expected_prev:
            problems.append(
                f"row {row['id']}: prev_hash does not match the previous row's hash "
                "(a row before it was removed, inserted or reordered)"
            )
        try:
            recomputed = compute_row_hash(row["prev_hash"] or "", fields)
        except (TypeError, ValueError) as exc:
            problems.append(f"row {row['id']}: contents cannot be hashed ({exc})")
            recomputed = None
        if recomputed is not None and recomputed != row["row_hash"]:
            problems.append(f"row {row['id']}: row_hash does not match its contents (the row was edited)")
        expected_prev = row["row_hash"]
        last_id = row["id"]
    if seq_row is not None and seq_row[0] is not None and seq_row[0] > last_id:
        problems.append(
            f"rows after id {last_id} are missing (ids were issued up to {seq_row[0]}): trailing rows were removed"
        )
    return problems


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
