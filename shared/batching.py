"""Concurrent calls served by one batch call: an asyncio primitive, used by storage and HTTP.

On this kind of machine a round trip costs far more in waking processes than in
the work itself, so the push path's per-record calls are coalesced (group
commit): link claims and writes (``shared.storage.links``), record reads from
the BSS API (``shared.bss.client``). ``await coalescer.submit(item)`` queues the
item, and one task runs ``run(items)`` for everything queued. Items arriving while
a batch runs wait and form the next batch (at most ``max_batch`` each), so under
load batches grow by themselves, and a lone call waits for one turn of the event
loop only.

``gather=True`` keeps a batch open while each turn of the event loop brings a new
item (as the audit writer's group commit does): callers that reach ``submit`` one
per turn — workers woken one after the other by a burst of deliveries — then share
one batch instead of a few each.

``run`` returns one result per item, in order: a value, or an exception for that
item alone. When ``run`` itself raises, every item of the batch gets the error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_MAX_BATCH = 200


class Coalescer(Generic[T, R]):
    """See the module docstring."""

    def __init__(self, run: Callable[[list[T]], Awaitable[list[R | BaseException]]], *,
                 max_batch: int = DEFAULT_MAX_BATCH, gather: bool = False) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._run = run
        self._max_batch = max_batch
        self._gather = gather
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if self._task is None:
            self._task = loop.create_task(self._drain(), name="coalescer")
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(0)  # the calls made in this turn join the batch
                if self._gather:
                    await self._gathered()
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._serve(batch)
        finally:
            self._task = None
            if self._pending:  # cancelled mid-way: nobody is left waiting forever
                for _, future in self._pending:
                    future.cancel()
                self._pending.clear()

    async def _gathered(self) -> None:
        """Yield while each turn brings a new item, up to ``max_batch``."""
        while len(self._pending) < self._max_batch:
            before = len(self._pending)
            await asyncio.sleep(0)
            if len(self._pending) == before:
                return

    async def _serve(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            results = await self._run([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} gave {len(results)} results")
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue  # its caller gave up (cancelled)
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
