"""The decision log's anchor: its head (last id, last MAC, row count) kept outside the database.

One small JSON file per decisions database, in ``$MEDASSIST_ANCHOR_DIR`` or else the ``anchors``
folder beside the site key, named after a hash of the database's absolute path (never the path
itself). The anchor carries its own HMAC, so it cannot be forged without the key, and it is
rewritten atomically (temporary file, fsync, ``os.replace``, fsync of the folder) on every write.

A write first records the row it is about to commit as ``pending``, commits, then records it as
the head. A crash in between leaves the database at either the head or the pending row, and both
verify; anything else means the database was changed behind medassist's back. All writers (and the
verifier) serialise on an ``flock`` of ``<anchor>.lock``, so anchors never go backwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medassist.atomic import write_atomic
from medassist.errors import MedassistError
from medassist.review.mac import mac_hex, same_mac

ANCHOR_DIR_ENV = "MEDASSIST_ANCHOR_DIR"
ANCHOR_FORMAT = "medassist-decision-anchor-1"
LOCK_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Head:
    """Where a chain ends: the last row's id and MAC, and how many rows it holds."""

    last_id: int
    last_mac: str
    count: int

    def describe(self) -> str:
        return f"{self.count} row(s), last id {self.last_id}" if self.count else "no rows"


EMPTY_HEAD = Head(0, "", 0)


@dataclass(frozen=True)
class Anchor:
    """The anchored state of one decision log."""

    log_id: str
    head: Head
    pending: Head | None = None

    def accepts(self, head: Head) -> bool:
        """True when ``head`` is the anchored head, or the pending one of an interrupted write."""
        return _same_head(head, self.head) or (self.pending is not None and _same_head(head, self.pending))


def anchor_dir(key_file: Path) -> Path:
    """``$MEDASSIST_ANCHOR_DIR``, else ``anchors/`` beside the key file."""
    configured = os.environ.get(ANCHOR_DIR_ENV)
    return Path(configured).expanduser().absolute() if configured else key_file.parent / "anchors"


def anchor_path_for(db_path: Path, key_file: Path, explicit: str | os.PathLike[str] | None = None) -> Path:
    """The anchor file of the database at ``db_path`` (``explicit`` when given)."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    digest = hashlib.sha256(str(db_path.resolve()).encode("utf-8")).hexdigest()[:32]
    return anchor_dir(key_file) / f"decisions-{digest}.anchor.json"


def read_anchor(path: Path, key: bytes) -> Anchor | None:
    """The anchor at ``path``, None when there is none; MedassistError when it was altered."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MedassistError(f"anchor {path}: unreadable ({exc})") from exc
    if not isinstance(record, dict) or record.get("format") != ANCHOR_FORMAT:
        raise MedassistError(f"anchor {path}: not a medassist decision anchor")
    if not same_mac(record.get("mac"), _anchor_mac(key, record)):
        raise MedassistError(f"anchor {path}: its MAC does not verify (altered, or made with another site key)")
    try:
        pending = record["pending"]
        return Anchor(
            log_id=str(record["log_id"]),
            head=_head(record["head"]),
            pending=None if pending is None else _head(pending),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise MedassistError(f"anchor {path}: malformed ({exc})") from exc


def write_anchor(path: Path, key: bytes, anchor: Anchor) -> None:
    """Replace the anchor at ``path`` atomically (mode 0600, fsync'd)."""
    record: dict[str, Any] = {
        "format": ANCHOR_FORMAT,
        "log_id": anchor.log_id,
        "head": _record(anchor.head),
        "pending": None if anchor.pending is None else _record(anchor.pending),
    }
    record["mac"] = _anchor_mac(key, record)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, json.dumps(record, sort_keys=True) + "\n", private=True)


@contextlib.contextmanager
def anchor_lock(path: Path, *, create: bool = True) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<anchor>.lock`` (no lock when it cannot exist and not ``create``)."""
    lock_path = path.with_name(path.name + ".lock")
    if create:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600) if create else os.open(lock_path, os.O_RDONLY)
    except OSError:
        if create:
            raise
        fd = None  # a verifier without the lock file (or the right to it) reads without locking
    if fd is None:
        yield
        return
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise MedassistError(f"{lock_path}: still locked by another writer after {LOCK_TIMEOUT_S:.0f} s")
                time.sleep(0.005)
        yield
    finally:
        os.close(fd)  # releases the lock


def _anchor_mac(key: bytes, record: dict[str, Any]) -> str:
    body = {name: value for name, value in record.items() if name != "mac"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return mac_hex(key, b"medassist-anchor-v1\x00" + text.encode("utf-8"))


def _record(head: Head) -> dict[str, Any]:
    return {"last_id": head.last_id, "last_mac": head.last_mac, "count": head.count}


def _head(value: Any) -> Head:
    return Head(last_id=int(value["last_id"]), last_mac=str(value["last_mac"]), count=int(value["count"]))


def _same_head(a: Head, b: Head) -> bool:
    return a.last_id == b.last_id and a.count == b.count and (a.count == 0 or same_mac(a.last_mac, b.last_mac))
