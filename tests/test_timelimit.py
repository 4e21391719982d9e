"""medassist.timelimit: a wall-clock limit on a block, nested limits included."""

from __future__ import annotations

import time

import pytest

from medassist.timelimit import DecodeTimeout, time_limit


def _busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_an_inner_limit_leaves_the_outer_one_running():
    with pytest.raises(DecodeTimeout) as raised:
        with time_limit(0.6):
            with pytest.raises(DecodeTimeout) as inner:
                with time_limit(0.1):  # its own timeout, caught here
                    _busy(3)
            assert inner.value.outer is False
            _busy(3)  # the outer limit must still fire (else no timeout is raised at all)
    assert raised.value.outer is False


def test_an_inner_limit_gets_no_more_than_the_outer_time_left_and_says_so():
    with pytest.raises(DecodeTimeout) as raised:
        with time_limit(0.4):
            with time_limit(30):
                _busy(3)
    assert raised.value.outer is True  # the outer's time, not the inner's 30 s; code catching its own re-raises these
    with time_limit(0.05):  # nothing left armed: a fresh limit, then none
        pass
    _busy(0.2)


def test_a_timeout_a_library_wrapped_in_its_own_error_is_still_known_as_a_timeout():
    import time

    from medassist.timelimit import DecodeTimeout, time_limit, timeout_if_fired

    limit = None
    try:
        with time_limit(0.05) as limit:
            try:
                while True:  # a library that catches everything, as pydicom's reader does
                    time.sleep(0.01)
            except BaseException as inner:
                raise OSError("No tag to read at file position 1234") from inner
    except OSError as caught:
        assert isinstance(timeout_if_fired(caught, limit), DecodeTimeout)
    other = OSError("a real read error")
    with time_limit(5) as quiet:
        pass
    assert timeout_if_fired(other, quiet) is other  # no alarm: the error is what it says
