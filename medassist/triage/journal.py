"""The triage journal: an append-only record of finished work that makes a run resumable.

``OUT/.triage_journal.jsonl`` holds one JSON object per line. Each line is flushed to the operating
system before the run goes on, so a killed run loses nothing; the file is fsynced at most once a
second (``SYNC_INTERVAL_S``), before every worklist rewrite and at the end, so a power cut loses at
most the last second's lines, which the next run recomputes. (An fsync per line put a disk flush on
the inference thread per series: 0.12 ms on this machine's disk, milliseconds on network storage.)
The journal looks like::

    {"key": ["result", SERIES_UID, MODEL, MODEL_VERSION], "status": "done", "row": {...}}

``key`` is ``["result", series_uid, model, model_version]`` for a (series, model) score - a new
model version therefore means new work - ``["not_applicable", series_uid]`` or
``["problem", path]``. ``status`` is ``"done"`` or ``"error"``; errors are recorded but not treated
as finished, so a re-run tries them again. The latest line for a key wins.

A run killed mid-write can leave a last line without its newline: it is ignored and cut off when
the journal is next opened, so the next append starts on a fresh line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from medassist.errors import MedassistError

log = logging.getLogger(__name__)

JOURNAL_NAME = ".triage_journal.jsonl"
SYNC_INTERVAL_S = 1.0
LOCK_NAME = ".triage.lock"

Key = tuple[str, ...]


def result_key(series_uid: str, model: str, model_version: str) -> Key:
    """The journal key of one model's result on one series."""
    return ("result", series_uid, model, model_version)


def not_applicable_key(series_uid: str) -> Key:
    """The journal key of a series no shipped model covers."""
    return ("not_applicable", series_uid)


def problem_key(path: str) -> Key:
    """The journal key of a file ingest could not read."""
    return ("problem", path)


@dataclass(frozen=True)
class Entry:
    """One journal line: the row, and whether the work is finished ("done") or failed ("error")."""

    key: Key
    status: str
    row: dict


def parse_journal(data: bytes) -> tuple[dict[Key, Entry], int]:
    """Entries (latest per key) from the journal's bytes, and the length of its complete lines.

    Bytes after the last newline are a torn write and are ignored; a complete line that does not
    parse is skipped with a warning.
    """
    complete = data.rfind(b"\n") + 1
    entries: dict[Key, Entry] = {}
    for number, line in enumerate(data[:complete].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            entry = Entry(tuple(raw["key"]), str(raw["status"]), dict(raw["row"]))
        except (ValueError, KeyError, TypeError):
            log.warning("triage journal line %d is not valid JSON; ignored", number)
            continue
        entries[entry.key] = entry
    return entries, complete


class Journal:
    """The open journal of one output folder: look up finished work, append new work durably."""

    def __init__(self, path: Path, sync_interval_s: float = SYNC_INTERVAL_S) -> None:
        self.path = Path(path)
        self.sync_interval_s = sync_interval_s
        data = self.path.read_bytes() if self.path.exists() else b""
        self.entries, complete = parse_journal(data)
        if complete < len(data):
            log.warning("%s: ignoring a half-written last line (interrupted run)", self.path)
            with open(self.path, "r+b") as handle:
                handle.truncate(complete)
                handle.flush()
                os.fsync(handle.fileno())
        self._handle = open(self.path, "a", encoding="utf-8")
        self._synced_at = time.monotonic()

    def finished(self, key: Key) -> dict | None:
        """The row of finished work under ``key``, or None if it has to be (re)done."""
        entry = self.entries.get(key)
        return entry.row if entry is not None and entry.status == "done" else None

    def record(self, key: Key, row: dict, status: str = "done") -> None:
        """Append and flush one line (fsynced with the next ``sync``, at most a second later); a line
        identical to the current entry is not repeated."""
        current = self.entries.get(key)
        if current is not None and current.status == status and current.row == row:
            return
        line = json.dumps({"key": list(key), "status": status, "row": row}, separators=(",", ":"))
        self._handle.write(line + "\n")
        self._handle.flush()
        self.entries[key] = Entry(key, status, row)
        if time.monotonic() - self._synced_at >= self.sync_interval_s:
            self.sync()

    def sync(self) -> None:
        """Flush and fsync what has been appended."""
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._synced_at = time.monotonic()

    def close(self) -> None:
        """Sync and close the append handle."""
        if not self._handle.closed:
            self.sync()
            self._handle.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` so two runs never write the same worklist at once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    handle = open(Path(out_dir) / LOCK_NAME, "a")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise MedassistError(f"{out_dir}: another triage run is writing to this folder") from exc
        yield
    finally:
        handle.close()
