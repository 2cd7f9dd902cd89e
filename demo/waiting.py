"""Waiting for a condition with a deadline: the one way the stack harness, the demo and
the synchronous tests wait.

``wait_until(probe, timeout=…, what=…)`` calls ``probe`` until it returns something
truthy and returns that; past the deadline it raises :class:`WaitTimedOut` naming
what it waited for and, with ``state``, how things stood. What is waited for lives in
other processes (a consumer subscribed, a server listening, rows committed), so
nothing here can be woken by it: the probe is polled every ``interval`` seconds, and
``between`` runs before each pause (check that the processes waited on are alive —
raising ends the wait — or show progress). In-process waits have hooks instead
(``Consumer.join``, ``MessageProcessor.settled``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class WaitTimedOut(AssertionError):
    """A condition did not hold within its deadline (an ``AssertionError``: in a test, a
    failure that says what it waited for)."""


def wait_until(probe: Callable[[], T], *, timeout: float, what: str,
               state: Callable[[], Any] | None = None, interval: float = 0.1,
               between: Callable[[], None] | None = None) -> T:
    """Call ``probe`` until it returns something truthy, and return that.

    Raises :class:`WaitTimedOut` naming ``what`` after ``timeout`` seconds, with
    ``state()`` (what was waited on, as it stands) in the message; whatever
    ``between`` raises ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            shown = state() if state is not None else result
            raise WaitTimedOut(f"timed out after {timeout:g} s waiting for {what}; "
                               f"current state: {shown}")
        if between is not None:
            between()
        time.sleep(interval)  # the pause between two polls of the condition
