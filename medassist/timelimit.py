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


class Limit:
    """What ``time_limit`` yields: ``fired`` turns True when its alarm went off, so code that had to
    catch everything (a library that wraps any error, the DecodeTimeout too, in its own) can still
    tell that the time ran out."""

    def __init__(self) -> None:
        self.fired = False
        self.outer = False  # the alarm was the enclosing limit's


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[Limit]:
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
    limit = Limit()
    if not usable:
        yield limit
        return
    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    outer_first = bool(outer_left) and outer_left <= float(seconds)  # type: ignore[arg-type]

    def on_alarm(signum: int, frame: object) -> None:
        limit.fired, limit.outer = True, outer_first
        raise DecodeTimeout(outer=outer_first)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, outer_left if outer_first else float(seconds))  # type: ignore[arg-type]
    try:
        yield limit
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        left = outer_left - (time.monotonic() - started)
        if outer_left and left > 0:  # the enclosing limit goes on
            signal.setitimer(signal.ITIMER_REAL, left)


def timeout_if_fired(exc: BaseException, limit: Limit | None) -> BaseException:
    """``exc`` as caught, or a DecodeTimeout when the limit's alarm went off and a library wrapped
    the timeout in an error of its own (pydicom turns any exception while reading into an OSError)."""
    if limit is not None and limit.fired and not isinstance(exc, DecodeTimeout):
        return DecodeTimeout(outer=limit.outer)
    return exc
