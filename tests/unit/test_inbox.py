"""The consumer's inbox: every delivery taken exactly once, workers woken sparingly."""

from __future__ import annotations

import asyncio
from typing import Any

from shared.messaging.delivery import Inbox


async def _workers(inbox: Inbox, count: int, taken: list[tuple[int, Any]],
                   pause: float | None) -> list[asyncio.Task[None]]:
    async def work(worker: int) -> None:
        while True:
            item = await inbox.get()
            taken.append((worker, item))
            if pause is not None:
                await asyncio.sleep(pause)

    tasks = [asyncio.create_task(work(i)) for i in range(count)]
    await asyncio.sleep(0)  # all waiting
    return tasks


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_burst_is_drained_by_one_worker_when_handling_does_not_suspend() -> None:
    inbox, taken = Inbox(), []
    tasks = await _workers(inbox, 8, taken, pause=None)
    for i in range(50):
        inbox.put(i)  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert sorted(item for _, item in taken) == list(range(50))
    assert len({worker for worker, _ in taken}) == 1
    await _stop(tasks)


async def test_a_burst_reaches_every_worker_when_handling_suspends() -> None:
    inbox, taken = Inbox(), []
    tasks = await _workers(inbox, 8, taken, pause=0.5)
    for i in range(8):
        inbox.put(i)  # type: ignore[arg-type]
    await asyncio.sleep(0.1)  # less than one handling: all 8 must be in progress at once
    assert sorted(item for _, item in taken) == list(range(8))
    assert len({worker for worker, _ in taken}) == 8
    await _stop(tasks)


async def test_a_woken_worker_cancelled_passes_the_wake_on() -> None:
    inbox, taken = Inbox(), []
    tasks = await _workers(inbox, 3, taken, pause=None)
    inbox.put("a")  # type: ignore[arg-type]
    tasks[0].cancel()  # the worker just woken dies before it runs
    await asyncio.sleep(0.01)
    assert [item for _, item in taken] == ["a"]
    inbox.put("b")  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert [item for _, item in taken] == ["a", "b"]
    await _stop(tasks)
