"""Reviewer accounts: one name and one password hash per person, in a users file outside OUT.

The file is ``$MEDASSIST_USERS_FILE``, else ``review-users.json`` beside the site key (default
``~/.config/medassist/``): JSON ``{"format": 1, "users": {NAME: {"hash": ..., "created": ...}}}``,
mode 0600, rewritten atomically. Passwords are hashed with Argon2id (``argon2-cffi``, its RFC 9106
defaults); the file never holds a password. A users file that group or others can read or write is
refused, like the site key.

Names are lower-case ``[a-z0-9][a-z0-9._@-]*`` (at most 64): the recorded reviewer is the name, so
it cannot carry spaces or the "(unauthenticated, loopback)" mark of the single-user mode.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from typing import Any

from medassist.atomic import write_atomic
from medassist.errors import MedassistError
from medassist.keys import default_key_path, refuse_shared
from medassist.optional import require
from medassist.review.throttle import LoginThrottle, refusal

USERS_FILE_ENV = "MEDASSIST_USERS_FILE"
USERS_FILE_NAME = "review-users.json"
FORMAT = 1
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")

HASHING = "reviewer accounts (Argon2id password hashes)"  # what needs argon2-cffi, for its message
_hasher_lock = threading.Lock()
_hasher_instance: Any = None
_dummy_lock = threading.Lock()
_dummy_hash: str | None = None


@dataclass(frozen=True)
class Account:
    """One reviewer account as listed (no hash)."""

    name: str
    created: str


def password_hasher() -> Any:
    """argon2-cffi's ``PasswordHasher`` (RFC 9106 defaults), made once; ``MissingDependency`` (pip
    install 'medassist[review]') without argon2-cffi. Listing and removing accounts do not need it."""
    global _hasher_instance
    with _hasher_lock:
        if _hasher_instance is None:
            argon2 = require("argon2", extra="review", feature=HASHING)
            _hasher_instance = argon2.PasswordHasher()
        return _hasher_instance


def default_users_path() -> Path:
    """The users file: ``$MEDASSIST_USERS_FILE``, else beside the site key."""
    explicit = os.environ.get(USERS_FILE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    return default_key_path().parent / USERS_FILE_NAME


def users_path(path: str | os.PathLike[str] | None = None) -> Path:
    """``path`` as a Path, else the default users file."""
    return Path(path).expanduser() if path is not None else default_users_path()


def normalise_name(name: str) -> str:
    """The account name as stored (lower case), or MedassistError when it is not a valid name."""
    value = (name or "").strip().lower()
    if not NAME_RE.fullmatch(value):
        raise MedassistError(f"{name!r}: not an account name (1-64 of a-z 0-9 . _ @ -, starting with a letter or digit)")
    return value


def check_password(password: str) -> None:
    """Refuse passwords that are too short or too long (MedassistError)."""
    if len(password) < MIN_PASSWORD:
        raise MedassistError(f"password too short: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise MedassistError(f"password too long: at most {MAX_PASSWORD} characters")


def read_users(path: str | os.PathLike[str] | None = None) -> dict[str, dict[str, str]]:
    """The users table (name -> {"hash", "created"}); empty when the file does not exist."""
    path = users_path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise MedassistError(f"{path}: cannot read the users file ({exc.strerror or exc})") from exc
    refuse_shared(path, mode, "the users file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MedassistError(f"{path}: not a readable users file ({exc})") from exc
    users = data.get("users") if isinstance(data, dict) and data.get("format") == FORMAT else None
    if not isinstance(users, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("hash"), str) for v in users.values()
    ):
        raise MedassistError(f"{path}: not a medassist users file (format {FORMAT} expected)")
    return users


def list_accounts(path: str | os.PathLike[str] | None = None) -> list[Account]:
    """Every account, sorted by name."""
    return [Account(name, str(entry.get("created", ""))) for name, entry in sorted(read_users(path).items())]


def has_accounts(path: str | os.PathLike[str] | None = None) -> bool:
    """True when the users file holds at least one account."""
    return bool(read_users(path))


def account_exists(name: str, path: str | os.PathLike[str] | None = None) -> bool:
    """True when ``name`` (normalised) is an account in the users file."""
    try:
        return normalise_name(name) in read_users(path)
    except MedassistError:
        return False


def add_user(name: str, password: str, path: str | os.PathLike[str] | None = None, *,
             replace: bool = False) -> Account:
    """Add an account (or set a new password with ``replace``); returns it."""
    name = normalise_name(name)
    check_password(password)
    path = users_path(path)
    users = read_users(path)
    if name in users and not replace:
        raise MedassistError(f"account {name} exists already (use --replace to set a new password)")
    created = users.get(name, {}).get("created") or datetime.now(timezone.utc).isoformat(timespec="seconds")
    users[name] = {"hash": password_hasher().hash(password), "created": created}
    _write_users(path, users)
    return Account(name, created)


def remove_user(name: str, path: str | os.PathLike[str] | None = None) -> None:
    """Remove an account (MedassistError when there is none of that name)."""
    name = normalise_name(name)
    path = users_path(path)
    users = read_users(path)
    if name not in users:
        raise MedassistError(f"no account {name} in {path}")
    del users[name]
    _write_users(path, users)


def verify_password(name: str, password: str, path: str | os.PathLike[str] | None = None) -> str | None:
    """The account name when ``password`` is its password, else None.

    An unknown name costs one Argon2 verification too, so timing does not tell which names exist.
    """
    try:
        key = normalise_name(name)
    except MedassistError:
        key = ""
    entry = read_users(path).get(key) if key else None
    hasher = password_hasher()
    errors = require("argon2.exceptions", extra="review", feature=HASHING)
    stored = entry["hash"] if entry else _dummy()
    try:
        ok = hasher.verify(stored, password[:MAX_PASSWORD])
    except (errors.VerifyMismatchError, errors.VerificationError, errors.InvalidHashError):
        ok = False
    return key if ok and entry else None


@dataclass(frozen=True)
class SignIn:
    """What a sign-in came to: the account (None when refused), the message, seconds to wait."""

    user: str | None
    message: str
    retry_after: int = 0


def sign_in(name: str, password: str, client: str, *, throttle: LoginThrottle,
            path: str | os.PathLike[str] | None = None) -> SignIn:
    """Check a sign-in under the throttle: refused unchecked while the account or client is locked."""
    account = " ".join((name or "").split()).lower()[:64]
    wait = throttle.retry_after(account, client)
    if wait:
        return SignIn(None, refusal(wait), wait)
    user = verify_password(account, password or "", path)
    if user is None:
        wait = throttle.failure(account, client)
        return SignIn(None, refusal(wait) if wait else "Wrong account name or password.", wait)
    throttle.success(account, client)
    return SignIn(user, f"Signed in as {user}.")


def _dummy() -> str:
    """A hash of a random password, made once: what unknown names are checked against."""
    global _dummy_hash
    with _dummy_lock:
        if _dummy_hash is None:
            _dummy_hash = password_hasher().hash(os.urandom(16).hex())
        return _dummy_hash


def _write_users(path: Path, users: dict[str, dict[str, str]]) -> None:
    """Write the table to ``path`` atomically and owner-only (``atomic.write_atomic``)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, json.dumps({"format": FORMAT, "users": users}, indent=1, sort_keys=True) + "\n",
                     private=True)
    except OSError as exc:
        raise MedassistError(f"{path}: cannot write the users file ({exc.strerror or exc})") from exc
