"""The per-instance rate limiter's arithmetic, with an injected clock (pure)."""

from __future__ import annotations

import asyncio

import pytest

from shared.errors import ConfigurationError
from shared.http.ratelimit import RateLimiter, Throttle
from shared.http.settings import (
    DEFAULT_CONCURRENCY,
    RateLimit,
    Timeouts,
    parse_duration,
)


class FakeClock:
    """Time that moves only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # not a wait: yields, as a real sleep does; time is faked


def test_a_burst_up_to_the_limit_starts_at_once_then_the_window_slides() -> None:
    limiter = RateLimiter(3, 1.0)
    for t in (0.0, 0.1, 0.2):
        assert limiter.delay(t) == 0
        limiter.record(t)
    assert limiter.delay(0.2) == pytest.approx(0.8), "the 4th waits for the 1st to leave"
    assert limiter.delay(1.0) == 0
    limiter.record(1.0)
    assert limiter.delay(1.0) == pytest.approx(0.1), "now the 2nd (t=0.1) is the oldest"


def test_never_more_than_the_limit_in_any_window() -> None:
    """A token bucket would let 2N through in one window; the log never lets N+1."""
    limiter = RateLimiter(10, 1.0)
    now, starts = 0.0, []
    for _ in range(50):
        now += limiter.delay(now)
        limiter.record(now)
        starts.append(now)
    for i, start in enumerate(starts):
        in_window = [s for s in starts[i:] if s < start + 1.0 - 1e-9]
        assert len(in_window) <= 10


def test_pause_until_holds_every_request_and_never_shortens() -> None:
    limiter = RateLimiter(100, 1.0)
    limiter.pause_until(50.0)
    limiter.pause_until(20.0)
    assert limiter.delay(10.0) == 40.0
    assert limiter.delay(50.0) == 0


def test_no_request_limit_still_pauses() -> None:
    limiter = RateLimiter(None)
    for _ in range(1000):
        limiter.record(0.0)
    assert limiter.delay(0.0) == 0
    limiter.pause_until(5.0)
    assert limiter.delay(1.0) == 4.0


async def test_acquire_waits_in_arrival_order_on_the_injected_clock() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2, 1.0, clock=clock, sleep=clock.sleep)
    started: list[tuple[int, float]] = []

    async def request(n: int) -> None:
        await limiter.acquire()
        started.append((n, clock.now - 1000.0))

    await asyncio.gather(*(request(n) for n in range(5)))
    assert started == [(0, 0.0), (1, 0.0), (2, 1.0), (3, 1.0), (4, 2.0)]


async def test_throttle_pause_for_delays_the_next_turn() -> None:
    clock = FakeClock()
    throttle = Throttle(RateLimit(requests=None, concurrency=2), clock=clock, sleep=clock.sleep)
    await throttle.turn()
    throttle.pause_for(30)
    await throttle.turn()
    assert clock.sleeps == [30]


async def test_throttle_slots_bound_concurrency() -> None:
    throttle = Throttle(RateLimit(concurrency=2))
    peak = 0

    async def work() -> None:
        nonlocal peak
        async with throttle.slot():
            peak = max(peak, throttle.in_flight)
            await asyncio.sleep(0.01)  # not a wait: a request in flight, so that they overlap

    await asyncio.gather(*(work() for _ in range(6)))
    assert peak == 2 and throttle.in_flight == 0


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"),
                         [("1s", 1.0), ("500ms", 0.5), ("10s", 10.0), ("1.5m", 90.0),
                          ("1h", 3600.0)])
def test_parse_duration(text, seconds) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["1", "s", "0s", "-1s", "1d", ""])
def test_parse_duration_refuses(text) -> None:
    with pytest.raises(ConfigurationError, match="duration"):
        parse_duration(text)


def test_rate_limit_from_connector_with_instance_override_key_by_key() -> None:
    connector = {"rateLimit": {"requests": 100, "per": "10s", "concurrency": 10}}
    assert RateLimit.from_settings(connector) == RateLimit(100, 10.0, 10)
    assert RateLimit.from_settings(connector, {"requests": 25}) == RateLimit(25, 10.0, 10)
    assert RateLimit.from_settings({}) == RateLimit(None, 1.0, DEFAULT_CONCURRENCY)
    with pytest.raises(ConfigurationError):
        RateLimit.from_settings(connector, {"concurrency": 0})


def test_timeouts_from_the_connector() -> None:
    assert Timeouts.from_settings({}) == Timeouts(5.0, 30.0)
    assert Timeouts.from_settings({"timeouts": {"read": 2}}) == Timeouts(5.0, 2.0)


def test_instance_timeouts_override_the_connectors_key_by_key():
    from shared.http.settings import Timeouts

    connector = {"timeouts": {"connect": 5, "read": 30}}
    assert Timeouts.from_settings(connector, {"read": 1.5}) == Timeouts(connect=5.0, read=1.5)
    assert Timeouts.from_settings(connector, None) == Timeouts(connect=5.0, read=30.0)
    assert Timeouts.from_settings({}, {}) == Timeouts()
