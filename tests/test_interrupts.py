"""``metainf.runtime.interrupts``: the stop behind an error that a library raised while the stop unwound."""

from __future__ import annotations

import pytest

from metainf.runtime.interrupts import interruption, reraise_interruption


class Stop(BaseException):
    """Like the CLI's SIGTERM stop: a BaseException that is not an Exception."""


def raised_during(first: BaseException, second: Exception) -> Exception:
    try:
        try:
            raise first
        except BaseException:
            raise second
    except Exception as error:
        return error


def test_the_stop_is_found_behind_a_context_or_cause_chain() -> None:
    stop = Stop()
    error = raised_during(stop, RuntimeError("cleanup failed"))
    assert interruption(error) is stop
    outer = raised_during(error, ValueError("wrapped again"))  # two levels up
    assert interruption(outer) is stop
    caused = ValueError("explicit")
    caused.__cause__ = KeyboardInterrupt()
    assert isinstance(interruption(caused), KeyboardInterrupt)
    with pytest.raises(Stop):
        reraise_interruption(outer)


def test_an_ordinary_error_has_no_stop_behind_it() -> None:
    error = raised_during(KeyError("k"), RuntimeError("handled another error"))
    assert interruption(error) is None
    reraise_interruption(error)  # returns
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a  # a cycle ends the walk
    assert interruption(a) is None
