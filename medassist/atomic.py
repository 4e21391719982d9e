"""Atomic file writes: a reader, or a crash, sees the old file or the new one, never half of one.

Every writer of a finished file goes through ``write_atomic`` (a finished folder: ``atomic_folder``): a fresh temporary file beside the
target (created exclusively), the payload, fsync, ``os.replace``, fsync of the folder. ``private``
files (worklists, logs, accounts, anything with patient identifiers or credentials) are owner-only
(0600); the rest get the usual permissions (0666 less the umask).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], payload: bytes | str, *, private: bool = False) -> Path:
    """Write ``payload`` (text is UTF-8, newlines as given) to ``path`` atomically; returns the path."""
    path = Path(path)
    data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename in ``directory`` durable (best effort: not every file system lets a folder be fsync'd)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def dicom_bytes(dataset) -> bytes:
    """A pydicom dataset as the bytes of a DICOM file (preamble, file meta), for ``write_atomic``."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a folder in a fresh temporary sibling of ``target`` (yielded), then rename it into place;
    ``target`` must by then be absent or an empty folder (callers decide what may be replaced and
    clear it first). On any failure the temporary folder is removed and ``target`` is left as it was."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            target.rmdir()  # an empty folder only: anything else stays, and the rename is not done
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(target.parent)
