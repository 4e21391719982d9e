"""Failed sign-ins slowed down, per account and per client: exponential backoff with a cap.

Each account name and each client address has its own count of failed sign-ins. The first
``free`` failures cost nothing; after that each failure locks that account (and that client) for
``base * 2 ** (n - free - 1)`` seconds, at most ``cap``. While either is locked, a sign-in is refused
before the password is checked, so a guesser gets a handful of tries an hour once the lock is at its
cap. A success clears its account's and client's counts; a count is forgotten ``forget`` seconds
after its last failure. The state lives in the server process (``shared_throttle``), across reruns
and sessions; the clock is injectable for tests.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

FREE_FAILURES = 3
BASE_SECONDS = 5.0
CAP_SECONDS = 900.0
FORGET_SECONDS = 24 * 3600.0
MAX_ENTRIES = 50_000


@dataclass
class _Entry:
    failures: int = 0
    last_failure: float = 0.0
    locked_until: float = 0.0


class LoginThrottle:
    """Backoff state for sign-ins; thread-safe."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, free: int = FREE_FAILURES,
                 base: float = BASE_SECONDS, cap: float = CAP_SECONDS, forget: float = FORGET_SECONDS,
                 max_entries: int = MAX_ENTRIES) -> None:
        self.clock = clock
        self.free, self.base, self.cap, self.forget, self.max_entries = free, base, cap, forget, max_entries
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, account: str, client: str) -> int:
        """Seconds (rounded up) until a sign-in for ``account`` from ``client`` is allowed; 0: now."""
        now = self.clock()
        with self._lock:
            wait = max(self._wait(("account", account), now), self._wait(("client", client), now))
        return math.ceil(wait) if wait > 0 else 0

    def failure(self, account: str, client: str) -> int:
        """Count a failed sign-in; returns the seconds until the next try is allowed."""
        now = self.clock()
        with self._lock:
            for key in (("account", account), ("client", client)):
                entry = self._entry(key, now)
                entry.failures += 1
                entry.last_failure = now
                over = entry.failures - self.free
                if over > 0:
                    entry.locked_until = now + min(self.cap, self.base * 2 ** min(over - 1, 60))
            self._prune()
        return self.retry_after(account, client)

    def success(self, account: str, client: str) -> None:
        """A successful sign-in clears the account's and the client's counts."""
        with self._lock:
            self._entries.pop(("account", account), None)
            self._entries.pop(("client", client), None)

    def failures(self, account: str, client: str) -> tuple[int, int]:
        """The current counts (account, client)."""
        now = self.clock()
        with self._lock:
            return (self._entry(("account", account), now, create=False).failures,
                    self._entry(("client", client), now, create=False).failures)

    def _wait(self, key: tuple[str, str], now: float) -> float:
        return self._entry(key, now, create=False).locked_until - now

    def _entry(self, key: tuple[str, str], now: float, *, create: bool = True) -> _Entry:
        entry = self._entries.get(key)
        if entry is not None and now - entry.last_failure > self.forget and now >= entry.locked_until:
            del self._entries[key]
            entry = None
        if entry is None:
            entry = _Entry()
            if not create:
                return entry
            self._entries[key] = entry
        self._entries.move_to_end(key)
        return entry

    def _prune(self) -> None:
        """Keep memory bounded: drop the least recently failed entries beyond ``max_entries``."""
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def refusal(seconds: int) -> str:
    """The message a throttled sign-in gets (names neither the account nor whether it exists)."""
    return f"Too many failed sign-ins for this account or from this address: try again in {seconds} s."


_shared: LoginThrottle | None = None
_shared_lock = threading.Lock()


def shared_throttle() -> LoginThrottle:
    """The server process's one throttle (the review app's sessions and reruns share it)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = LoginThrottle()
        return _shared
