"""A wall-clock limit on a block of code (SIGALRM), for decoding series and reading headers.

Lives apart from the stages so that ingest (header reads) and triage (series decoding) share it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator


class DecodeTimeout(BaseException):
    """Raised in a block under ``time_limit`` (a series' decoding, a file's header) when its time is up.

    A BaseException, like KeyboardInterrupt, so that ``except Exception`` in a decoder cannot turn
    it into a misleading "undecodable" message. ``outer``: it was an enclosing limit's time that ran
    out, inside a nested one; code catching its own limit's timeout must re-raise those.
    """

    def __init__(self, outer: bool = False) -> None:
        super().__init__("an enclosing time limit ran out" if outer else "time limit reached")
        self.outer = outer


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise DecodeTimeout in the block after ``seconds`` of wall-clock time (SIGALRM).

    Only where a signal can do it: on Unix, in the main thread of a process (DataLoader workers
    call ``__getitem__`` in theirs). Elsewhere, or for ``None``/0, there is no limit. Code stuck
    inside one C call is interrupted when the call returns. Limits nest: an inner block gets at most
    the outer one's time left (and then raises ``DecodeTimeout(outer=True)``), and the outer limit
    runs on after it.
    """
    usable = (
        seconds
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return
    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    outer_first = bool(outer_left) and outer_left <= float(seconds)  # type: ignore[arg-type]

    def on_alarm(signum: int, frame: object) -> None:
        raise DecodeTimeout(outer=outer_first)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, outer_left if outer_first else float(seconds))  # type: ignore[arg-type]
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        left = outer_left - (time.monotonic() - started)
        if outer_left and left > 0:  # the enclosing limit goes on
            signal.setitimer(signal.ITIMER_REAL, left)
