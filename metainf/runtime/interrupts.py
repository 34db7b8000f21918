"""Stops (Ctrl-C, the CLI's SIGTERM) that surface as another error.

Python raises a signal handler's exception at any bytecode boundary. Inside torch's ``vmap`` that can leave its
internal layer stack inconsistent, so torch's own cleanup raises ``RuntimeError: !dynamicLayerStack.empty() INTERNAL
ASSERT FAILED`` with the stop as its ``__context__`` (seen in CI: SIGTERM during training, exit 1 with a traceback).
An ``except Exception`` that records a failure and goes on would then swallow the stop.
"""

from __future__ import annotations


def interruption(error: BaseException) -> BaseException | None:
    """The stop behind ``error``: the first exception in its ``__cause__`` / ``__context__`` chain (``error``
    included) that is a ``BaseException`` but not an ``Exception`` (``KeyboardInterrupt``, a SIGTERM's stop), or
    None."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if not isinstance(current, Exception):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def reraise_interruption(error: BaseException) -> None:
    """Raise the stop behind ``error`` (:func:`interruption`), if there is one; else return. Call it first in an
    ``except Exception`` block that records the error and goes on."""
    stop = interruption(error)
    if stop is not None:
        raise stop
