"""The consumer's inbox: every delivery taken exactly once, workers woken sparingly."""

from __future__ import annotations

import asyncio
from typing import Any

from shared.messaging.delivery import Inbox
from tests.fixtures.waiting import eventually


async def _workers(inbox: Inbox, count: int, taken: list[tuple[int, Any]],
                   handling: asyncio.Event | None) -> list[asyncio.Task[None]]:
    """``count`` workers; each handling lasts until ``handling`` is set (None: it does
    not suspend)."""
    async def work(worker: int) -> None:
        while True:
            item = await inbox.get()
            taken.append((worker, item))
            if handling is not None:
                await handling.wait()

    tasks = [asyncio.create_task(work(i)) for i in range(count)]
    await asyncio.sleep(0)  # not a wait: one turn, in which every worker starts and blocks
    return tasks


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_burst_is_drained_by_one_worker_when_handling_does_not_suspend() -> None:
    inbox, taken = Inbox(), []
    tasks = await _workers(inbox, 8, taken, handling=None)
    for i in range(50):
        inbox.put(i)  # type: ignore[arg-type]
    await eventually(lambda: len(taken) == 50, what="the 50 deliveries taken")
    assert sorted(item for _, item in taken) == list(range(50))
    assert len({worker for worker, _ in taken}) == 1
    await _stop(tasks)


async def test_a_burst_reaches_every_worker_when_handling_suspends() -> None:
    inbox, taken = Inbox(), []
    never = asyncio.Event()  # every handling lasts to the end of the test
    tasks = await _workers(inbox, 8, taken, handling=never)
    for i in range(8):
        inbox.put(i)  # type: ignore[arg-type]
    await eventually(lambda: len(taken) == 8, what="the 8 deliveries taken")
    assert sorted(item for _, item in taken) == list(range(8))
    assert len({worker for worker, _ in taken}) == 8  # all 8 in progress at once
    await _stop(tasks)


async def test_a_woken_worker_cancelled_passes_the_wake_on() -> None:
    inbox, taken = Inbox(), []
    tasks = await _workers(inbox, 3, taken, handling=None)
    inbox.put("a")  # type: ignore[arg-type]
    tasks[0].cancel()  # the worker just woken dies before it runs
    await eventually(lambda: len(taken) == 1, what="'a' taken by another worker")
    assert [item for _, item in taken] == ["a"]
    inbox.put("b")  # type: ignore[arg-type]
    await eventually(lambda: len(taken) == 2, what="'b' taken")
    assert [item for _, item in taken] == ["a", "b"]
    await _stop(tasks)


async def test_emptied_returns_once_the_last_delivery_is_taken() -> None:
    inbox, taken = Inbox(), []
    await asyncio.wait_for(inbox.emptied(), 10)  # empty: at once
    inbox.put("a")  # type: ignore[arg-type]
    inbox.put("b")  # type: ignore[arg-type]
    waiting = asyncio.ensure_future(inbox.emptied())
    await asyncio.sleep(0)  # not a wait: one turn, in which it starts and blocks
    assert not waiting.done()
    tasks = await _workers(inbox, 1, taken, handling=None)
    await asyncio.wait_for(waiting, 10)
    assert [item for _, item in taken] == ["a", "b"] and len(inbox) == 0
    await _stop(tasks)


async def test_emptied_returns_when_the_inbox_is_cleared_and_is_cancellable() -> None:
    inbox = Inbox()
    inbox.put("a")  # type: ignore[arg-type]
    cancelled = asyncio.ensure_future(inbox.emptied())
    waiting = asyncio.ensure_future(inbox.emptied())
    await asyncio.sleep(0)  # not a wait: one turn, in which both start and block
    cancelled.cancel()
    inbox.clear()  # a lost session's deliveries: left to the broker
    await asyncio.wait_for(waiting, 10)
    assert cancelled.cancelled()
