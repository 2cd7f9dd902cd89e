"""The coalescer behind batched statements: one call per batch, results to their callers."""

from __future__ import annotations

import asyncio

import pytest

from shared.batching import Coalescer
from shared.storage.links import distinct_rounds


def test_distinct_rounds_keep_order_and_never_repeat_a_key() -> None:
    items = ["a", "b", "a", "c", "a", "b"]
    assert distinct_rounds(items, lambda x: x) == [[0, 1, 3], [2, 5], [4]]


async def test_concurrent_calls_share_a_batch_and_get_their_own_results() -> None:
    calls: list[list[int]] = []

    async def run(items: list[int]) -> list[int | BaseException]:
        calls.append(items)
        await asyncio.sleep(0.01)  # not a wait: a statement's round trip, while calls pile up
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

    coalescer: Coalescer[int, int] = Coalescer(run, max_batch=4)
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(10)),
                                   return_exceptions=True)
    assert [r if isinstance(r, int) else str(r) for r in results] == [
        0, "odd 1", 20, "odd 3", 40, "odd 5", 60, "odd 7", 80, "odd 9"]
    assert [len(batch) for batch in calls] == [4, 4, 2]
    assert await coalescer.submit(2) == 20  # a lone call is served too


async def test_a_failing_batch_fails_each_of_its_callers() -> None:
    async def run(items: list[int]) -> list[int | BaseException]:
        raise ConnectionError("database down")

    coalescer: Coalescer[int, int] = Coalescer(run)
    results = await asyncio.gather(coalescer.submit(1), coalescer.submit(2),
                                   return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    with pytest.raises(ConnectionError):
        await coalescer.submit(3)


@pytest.mark.parametrize(("gather", "sizes"), [(False, [3, 3, 3, 3]), (True, [12])])
async def test_gather_keeps_a_batch_open_while_each_turn_brings_a_caller(
        gather: bool, sizes: list[int]) -> None:
    """Workers woken one after the other (one per turn of the event loop, as the consumer's
    inbox wakes them) share one batch with ``gather``, a few per batch without."""
    calls: list[list[int]] = []

    async def run(items: list[int]) -> list[int | BaseException]:
        calls.append(items)
        return items

    coalescer: Coalescer[int, int] = Coalescer(run, gather=gather)

    async def chain(n: int) -> list[int]:
        if n == 12:
            return []
        nxt = asyncio.ensure_future(chain(n + 1))  # the next worker, woken for the next turn
        return [await coalescer.submit(n), *await nxt]

    assert await chain(0) == list(range(12))
    assert [len(batch) for batch in calls] == sizes
