"""Per-instance rate limit and concurrency (docs/architecture.md §5: "honours the connector's rate
limit and concurrency per instance").

``RateLimiter`` lets at most ``requests`` requests start in any window of ``per``
seconds, bursts of up to ``requests`` included. It is a sliding-window log rather than
a classic token bucket on purpose: a bucket holding ``requests`` tokens and refilling at
``requests/per`` lets up to ``2 * requests`` through in one window (a full bucket, then
the refill), which is exactly what a third party counting "100 requests per 10 s" answers
with 429. The log never does. ``pause_until`` stops every request of the instance until
a ``Retry-After`` deadline.

``Throttle`` couples the limiter with the concurrency semaphore.

Limits are **per process**: every process enforces the connector's limit on its own.
With N processes deployed the operator divides the limit by N in the instance's
``rateLimit`` override (or accepts a few 429s, which are retried with ``Retry-After``).
Pure arithmetic (``delay``) takes the time as an argument so tests inject a clock.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from shared.http.settings import RateLimit

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class RateLimiter:
    """At most ``requests`` starts in any ``per``-second window (``None``: no limit,
    pauses only), for the tasks of one event loop. Waiters are served in arrival order."""

    def __init__(
        self,
        requests: int | None,
        per: float = 1.0,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if (requests is not None and requests < 1) or per <= 0:
            raise ValueError("a rate limit needs requests >= 1 and per > 0")
        self.requests = requests
        self.per = per
        self._clock = clock
        self._sleep = sleep
        self._starts: collections.deque[float] = collections.deque(maxlen=requests or 1)
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def delay(self, now: float) -> float:
        """Seconds a request arriving at ``now`` must wait (0 when it may start)."""
        wait = self._paused_until - now
        if self.requests and len(self._starts) == self.requests:
            wait = max(wait, self._starts[0] + self.per - now)
        return max(0.0, wait)

    def record(self, now: float) -> None:
        """Count a request started at ``now``."""
        self._starts.append(now)

    def pause_until(self, deadline: float) -> None:
        """Start no request before ``deadline`` (a ``clock()`` value); never shortens."""
        self._paused_until = max(self._paused_until, deadline)

    @property
    def paused_until(self) -> float:
        return self._paused_until

    async def acquire(self) -> None:
        """Wait until a request may start, and count it."""
        async with self._lock:
            while (wait := self.delay(self._clock())) > 0:
                await self._sleep(wait)
            self.record(self._clock())


class Throttle:
    """One instance's limits in one process: a concurrency semaphore and, when the
    connector declares one, a rate limiter. Also counts requests in flight."""

    def __init__(
        self, limit: RateLimit, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.limit = limit
        self.clock = clock
        self._semaphore = asyncio.Semaphore(limit.concurrency)
        self._limiter = RateLimiter(limit.requests, limit.per, clock=clock, sleep=sleep)
        self.in_flight = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the ``concurrency`` slots for the block."""
        async with self._semaphore:
            self.in_flight += 1
            try:
                yield
            finally:
                self.in_flight -= 1

    async def turn(self) -> None:
        """Wait for the rate limit (and any pause) to let one request start."""
        await self._limiter.acquire()

    def pause_for(self, seconds: float) -> None:
        """Hold every request of the instance for ``seconds`` (a ``Retry-After``)."""
        self._limiter.pause_until(self.clock() + seconds)
