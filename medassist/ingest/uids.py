"""Deterministic UIDs for inputs that carry none (NIfTI files, DICOM files missing their UIDs)."""

from __future__ import annotations

import hashlib
import os


def uid_from_path(kind: str, path: str) -> str:
    """A ``2.25.<int>`` UID from a hash of ``kind`` and the absolute path, so re-runs agree.

    ``kind`` ("study", "series") keeps the study and series UIDs of one file distinct.
    The integer is 128 bits, so the UID stays within DICOM's 64 characters.
    """
    digest = hashlib.sha256(f"{kind}:{os.path.abspath(path)}".encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))
