"""HMAC-SHA256 (``cryptography``) for the decision log, under a key derived from the site key.

The site key itself (where it lives, mode 0600, created on first use) is :mod:`medassist.keys`;
the log uses ``purpose_key(site_key, "decision-log")``, so no MAC made for another purpose (model
signatures) is ever valid here.
"""

from __future__ import annotations

import hmac as std_hmac
import os
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC

from medassist.keys import default_key_path, load_site_key, purpose_key

LOG_PURPOSE = "decision-log"


def key_file_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The site key file: ``explicit``, else ``$MEDASSIST_KEY_FILE``, else the default (absolute)."""
    return (Path(explicit).expanduser() if explicit else default_key_path()).absolute()


def log_key(key_file: Path, *, create: bool = False) -> bytes:
    """The decision log's key from the site key at ``key_file`` (created there first when ``create``)."""
    return purpose_key(load_site_key(key_file, create=create), LOG_PURPOSE)


def mac_hex(key: bytes, data: bytes) -> str:
    """HMAC-SHA256 of ``data`` under ``key``, as 64 hex digits."""
    mac = HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize().hex()


def same_mac(a: object, b: object) -> bool:
    """Constant-time comparison of two hex MACs (False when either is not text)."""
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    return std_hmac.compare_digest(a.encode("ascii", "replace"), b.encode("ascii", "replace"))
