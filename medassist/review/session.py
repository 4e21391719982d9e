"""Signed session tokens for the review app behind its proxy (``medassist review --public``).

The sign-in endpoint (``review.proxy``) sets the cookie ``medassist_session`` to
``base64url(JSON {"u": name, "exp": unix time, "n": nonce}) "." HMAC-SHA256`` under the site key's
``review-session`` purpose key. nginx asks the endpoint about every request (it also checks that the
nonce is live: signing out ends it); the app checks the same token from its WebSocket's cookies, so the
recorded reviewer is the signed name, never one a client typed or a header claimed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from medassist.keys import purpose_key

COOKIE_NAME = "medassist_session"
SESSION_SECONDS = 12 * 3600
PURPOSE = "review-session"


@dataclass(frozen=True)
class Session:
    """A verified session: who, until when (unix time), and its nonce."""

    user: str
    expires: int
    nonce: str


def session_key(site_key: bytes) -> bytes:
    """The key that signs session tokens (derived from the site key, for this purpose only)."""
    return purpose_key(site_key, PURPOSE)


def issue(key: bytes, user: str, *, now: float | None = None, lifetime: int = SESSION_SECONDS) -> tuple[str, Session]:
    """A new token for ``user`` and the session it stands for."""
    now = time.time() if now is None else now
    session = Session(user, int(now) + int(lifetime), secrets.token_urlsafe(18))
    body = json.dumps({"u": session.user, "exp": session.expires, "n": session.nonce},
                      separators=(",", ":"), sort_keys=True).encode()
    payload = base64.urlsafe_b64encode(body).decode().rstrip("=")
    return f"{payload}.{_mac(key, payload)}", session


def verify(key: bytes, token: str | None, *, now: float | None = None) -> Session | None:
    """The session ``token`` stands for when its MAC is right and it has not expired, else None."""
    if not token or len(token) > 4096 or token.count(".") != 1:
        return None
    payload, mac = token.split(".")
    if not hmac.compare_digest(mac.encode(), _mac(key, payload).encode()):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        session = Session(str(data["u"]), int(data["exp"]), str(data["n"]))
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
    now = time.time() if now is None else now
    return session if session.expires > now and session.user else None


def _mac(key: bytes, payload: str) -> str:
    return hmac.new(key, b"medassist session: " + payload.encode(), hashlib.sha256).hexdigest()
