"""The bootstrap of a consuming service: build every dependency, run, shut down cleanly.

A service's ``__main__`` is one call::

    sys.exit(main(PUSHER, SYNC_CODEC, make_handler))   # shared.messaging.topology.PUSHER

where ``make_handler(deps) -> handler`` receives :class:`RuntimeDeps` (settings,
database, audit writer, and the live publisher the dispatcher publishes with).
The runner declares the topology (and checks that the broker dead-letters at least
once), opens the database and the audit writer —
retrying with backoff while RabbitMQ or PostgreSQL are not up yet — installs the
SIGTERM/SIGINT handlers, runs the consumer, and closes everything in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import structlog

from shared.audit.writer import AuditWriter
from shared.errors import ConfigurationError, InfrastructureError
from shared.logging import configure_logging
from shared.messaging.codec import Codec, Handler
from shared.messaging.connection import Backoff
from shared.messaging.consumer import Consumer, ConsumerConfig
from shared.messaging.live_publisher import LivePublisher
from shared.messaging.topology import WorkQueue, declare_topology, require_at_least_once
from shared.settings import Settings, SettingsInvalid, get_settings
from shared.storage.db import Database

log = structlog.get_logger("shared.messaging")
T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class RuntimeDeps:
    """What a handler factory may use; all open while the consumer runs."""

    settings: Settings
    db: Database
    audit: AuditWriter
    publisher: LivePublisher
    queue: WorkQueue
    #: Same database, commits not waiting for their WAL flush: for writes whose
    #: durability rides on the audit row's (synchronous) commit that follows them
    #: before the ack — link claims and link updates (see shared.storage.db).
    coordination_db: Database | None = None


HandlerFactory = Callable[[RuntimeDeps], Handler]
#: Work a service does beside its consumer (the dispatcher's scheduler): started once
#: the dependencies are up, given the event set when the service stops.
Companion = Callable[[RuntimeDeps, asyncio.Event], Awaitable[None]]
#: Seconds a companion gets to finish after the consumer stopped before it is cancelled.
COMPANION_GRACE = 10.0


async def run_consumer(
    service: str | WorkQueue,
    codec: Codec[Any],
    handler_factory: HandlerFactory,
    settings: Settings | None = None,
    *,
    burst_idle: float | None = None,
    handle_signals: bool = True,
    always_deduplicate: bool = False,
    companions: Sequence[Companion] = (),
) -> None:
    """Run ``service``'s consumer until SIGTERM/SIGINT (or, with ``burst_idle``, an empty queue).

    ``always_deduplicate`` looks every message up in the audit log before handling
    it (concurrent look-ups in one query), so that a producer's duplicate publish is
    recognised too: the dispatcher's setting.
    Raises :class:`~shared.errors.ConfigurationError` when the topology conflicts
    with what RabbitMQ holds (an operator must act; retrying would not help).
    """
    settings = settings or get_settings()
    queue = service if isinstance(service, WorkQueue) else WorkQueue(service,
                                                                     settings.retry_delays)
    stop = asyncio.Event()
    consumer: Consumer | None = None

    def on_signal() -> None:
        stop.set()
        if consumer is not None:
            consumer.stop()

    loop = asyncio.get_running_loop()
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
    try:
        await _until_up(lambda: asyncio.to_thread(
            declare_topology, settings.amqp_url, settings.retry_delays, settings.delivery_limit),
            "declare the RabbitMQ topology", stop)
        await _until_up(lambda: asyncio.to_thread(require_at_least_once, settings.amqp_url),
                        "check that RabbitMQ dead-letters at least once", stop)
        db = Database.from_settings(settings)
        await _until_up(db.open, "open the database", stop)
        coordination = Database.from_settings(settings, synchronous_commit=False)
        audit = AuditWriter(db, settings.audit_batch_size, settings.audit_batch_interval)
        handler: Any = None
        try:
            await _until_up(coordination.open, "open the database", stop)
            await _until_up(audit.start, "start the audit writer", stop)
            publisher = LivePublisher()
            deps = RuntimeDeps(settings, db, audit, publisher, queue, coordination)
            handler = handler_factory(deps)
            config = ConsumerConfig.from_settings(settings, burst_idle=burst_idle,
                                                  always_deduplicate=always_deduplicate)
            consumer = Consumer(queue, codec, handler, audit, config, publisher=publisher)
            tasks = [asyncio.create_task(companion(deps, stop)) for companion in companions]
            try:
                if not stop.is_set():
                    await consumer.run()
            finally:
                stop.set()
                await _finish_companions(tasks)
        finally:
            closing = getattr(handler, "aclose", None)
            if closing is not None:  # a handler holding clients closes them here
                with contextlib.suppress(Exception):
                    await closing()
            await audit.close()
            await coordination.close()
            await db.close()
    finally:
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


async def _finish_companions(tasks: list[asyncio.Task[None]]) -> None:
    """Give the companions :data:`COMPANION_GRACE` seconds to stop, then cancel them."""
    if not tasks:
        return
    _done, pending = await asyncio.wait(tasks, timeout=COMPANION_GRACE)
    for task in pending:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            log.error("companion failed", error=f"{type(result).__name__}: {result}")


async def _until_up(start: Callable[[], Awaitable[T]], doing: str, stop: asyncio.Event) -> None:
    """``await start()``, retried with backoff while infrastructure is down (until ``stop``)."""
    backoff = Backoff(base=0.5, cap=15.0)
    while not stop.is_set():
        try:
            await start()
            return
        except ConfigurationError:
            raise
        except InfrastructureError as exc:
            delay = backoff.next_delay()
            log.warning(f"cannot {doing} yet; retrying", error=str(exc), retry_in=round(delay, 1))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)


def main(service: str, codec: Codec[Any], handler_factory: HandlerFactory,
         *, burst_idle: float | None = None, always_deduplicate: bool = False,
         companions: Sequence[Companion] = ()) -> int:
    """Entry point of a service process: configure logging, run, return the exit code.

    0 after a graceful stop; 78 (EX_CONFIG) when the configuration (an unusable
    environment variable) or the topology is wrong, with one log line saying why.
    """
    try:
        settings = get_settings()
    except SettingsInvalid as exc:  # logging as configured as the environment allows
        configure_logging(os.environ.get("LOG_LEVEL", "INFO"),
                          os.environ.get("LOG_FORMAT", "auto"), service=service)
        log.error("cannot start", error=str(exc))
        return 78
    configure_logging(settings.log_level, settings.log_format, service=service)
    try:
        tune_gc(settings)
        run_loop(settings, run_consumer(service, codec, handler_factory, settings,
                                        burst_idle=burst_idle,
                                        always_deduplicate=always_deduplicate,
                                        companions=companions))
    except ConfigurationError as exc:
        log.error("cannot start", error=str(exc))
        return 78
    return 0


def tune_gc(settings: Any) -> None:
    """Make the cyclic garbage collector run less often (``GC_THRESHOLD``).

    A consumer keeps thousands of objects alive (deliveries in flight, their
    messages, audit rows, futures), and Python's default — a young-generation pass
    every 700 allocations, each one walking those objects — cost about a fifth of
    the consumer's CPU (measured with bench/consumer.py). Almost everything here is
    freed by reference counting anyway. ``gc.freeze()`` moves what start-up built
    (modules, schemas, compiled connectors) out of the collector's way for good.
    """
    if settings.gc_threshold:
        gc.freeze()
        gc.set_threshold(settings.gc_threshold, 20, 100)


def run_loop(settings: Any, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on the configured event loop (``EVENT_LOOP``: uvloop by default;
    its socket transports cost about half of asyncio's on the push path)."""
    if settings.event_loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
