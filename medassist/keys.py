"""The site key: one secret per site, outside every output folder, for what must not be forged.

Whatever needs a keyed MAC at the site (model signatures, the decision log) takes its key from
here, each through ``purpose_key`` so that a MAC made for one purpose is never valid for another.

The key file is ``$MEDASSIST_KEY_FILE``, else ``$XDG_CONFIG_HOME/medassist/site.key`` (default
``~/.config/medassist/site.key``): 32 random bytes, hex, created on first use with mode 0600. A
key file that group or others can read or write is refused (like ssh does with its keys): someone
who can read it can forge whatever it protects.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import tempfile
from pathlib import Path

from medassist.errors import MedassistError

KEY_FILE_ENV = "MEDASSIST_KEY_FILE"
KEY_BYTES = 32


def default_key_path() -> Path:
    """The site key file: ``$MEDASSIST_KEY_FILE``, else under the user's config folder."""
    explicit = os.environ.get(KEY_FILE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "medassist" / "site.key"


def load_site_key(path: str | Path | None = None, *, create: bool = True) -> bytes:
    """The site key from ``path`` (default ``default_key_path()``); created there (0600) when
    missing and ``create``, else a missing file raises MedassistError."""
    path = Path(path) if path is not None else default_key_path()
    if not path.exists():
        if not create:
            raise MedassistError(f"{path}: no site key here (set {KEY_FILE_ENV} to the site's key file)")
        _create_key_file(path)
    return _read_key_file(path)


def purpose_key(key: bytes, purpose: str) -> bytes:
    """A key for one purpose only (e.g. "model-signature"), derived from the site key."""
    return hmac.new(key, b"medassist purpose: " + purpose.encode(), hashlib.sha256).digest()


def key_id(key: bytes) -> str:
    """A short public name of a key (16 hex digits), to tell which key made a MAC."""
    return hashlib.sha256(b"medassist key id: " + key).hexdigest()[:16]


def _create_key_file(path: Path) -> None:
    """Write a new random key to ``path`` (0600) atomically, never over an existing file (a
    concurrent first use keeps the key that was linked first)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".site-key-")  # mode 0600
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(KEY_BYTES) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    except OSError as exc:
        raise MedassistError(f"{path}: cannot create the site key ({exc.strerror or exc})") from exc


def _read_key_file(path: Path) -> bytes:
    """The key in ``path``, after checking only its owner can read or write it."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise MedassistError(f"{path}: cannot read the site key ({exc.strerror or exc})") from exc
    refuse_shared(path, mode, "the site key")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < KEY_BYTES:
        raise MedassistError(f"{path}: not a site key ({KEY_BYTES * 2} or more hex digits expected)")
    return key


def refuse_shared(path: Path, mode: int, what: str) -> None:
    """MedassistError when a secret file (mode ``mode``) is accessible to the group or others."""
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise MedassistError(f"{path}: {what} is accessible to others (mode {stat.S_IMODE(mode):04o}); "
                             f"run: chmod 600 {path}")
