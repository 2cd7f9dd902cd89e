"""The RabbitMQ topology (docs/architecture.md §4): the only module that spells exchange
and queue names.

Every other module (services, tooling, tests, benchmarks) imports the names from
here: the constants below, or :class:`WorkQueue` for a service's work, retry and
dead queues. Declared as data with kombu, idempotently, by :func:`declare_topology`
at service start and by ``bss-sync topology declare``::

    bss.events (topic) ──#──▶ dispatcher.events (quorum)
    sync.push  (topic) ──#──▶ pusher            (quorum)
    sync.pull  (topic) ──#──▶ puller            (quorum)
    sync.dead  (topic) ──<service>.#──▶ <service>.dead (quorum)

    <service>.retry.<delay>  classic, x-message-ttl = delay, dead-letters back to
                             the work queue through the default exchange

Every work queue has ``x-delivery-limit`` and dead-letters to ``sync.dead`` with
routing key ``<service>``: the safety net for a message that crashes its consumer
again and again. The consumer itself sends failed messages to the retry and dead
queues (:mod:`shared.messaging.settle`), so the safety net only catches what the
runtime could not settle.

Retry delays are per-queue TTLs, one queue per rung of the ladder, named after the
delay (``pusher.retry.30s``, ``pusher.retry.2m``). Changing the ladder therefore
declares *new* retry queues: the old ones keep working (their messages still
return to the work queue when their TTL expires) and can be deleted once empty.
Changing an argument of an existing queue (``delivery_limit``) is refused by
RabbitMQ; :class:`TopologyConflict` says which queue and argument differ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from kombu import Connection, Exchange, Queue, binding

from shared.errors import ConfigurationError
from shared.logging import redact
from shared.messaging.amqp_url import broker_at
from shared.settings import DEFAULT_RETRY_DELAYS

EVENTS_EXCHANGE = "bss.events"
PUSH_EXCHANGE = "sync.push"
PULL_EXCHANGE = "sync.pull"
DEAD_EXCHANGE = "sync.dead"
#: The AMQP default exchange: routes by queue name (retry queues are reached through it).
DEFAULT_EXCHANGE = ""

#: The services that consume: each has a work queue, a retry ladder and a dead queue.
DISPATCHER = "dispatcher"
PUSHER = "pusher"
PULLER = "puller"
SERVICES = (DISPATCHER, PUSHER, PULLER)
#: The dispatcher's work queue; the pusher's and the puller's are named after the service.
DISPATCHER_QUEUE = "dispatcher.events"

DECLARE_TIMEOUT = 10.0


class TopologyConflict(ConfigurationError):
    """RabbitMQ refused to redeclare an exchange or queue whose arguments changed."""


def format_delay(seconds: float) -> str:
    """The queue-name suffix of a retry delay: ``30s``, ``2m``, ``1h``, ``200ms``.

    Raises ``ValueError`` for a delay that is not positive.
    """
    if seconds <= 0:
        raise ValueError(f"retry delays must be positive, got {seconds!r}")
    ms = round(seconds * 1000)
    if ms % 3_600_000 == 0:
        return f"{ms // 3_600_000}h"
    if ms % 60_000 == 0:
        return f"{ms // 60_000}m"
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


def sync_routing_key(entity: str, action: str, org_id: str, instance_id: str) -> str:
    """Routing key of a sync message: ``<entity>.<action>.<org_id>.<instance_id>``."""
    return f"{entity}.{action}.{org_id}.{instance_id}"


@dataclasses.dataclass(frozen=True, slots=True)
class RetryQueue:
    """One rung of a service's retry ladder."""

    name: str
    delay: float
    work_queue: str

    @property
    def ttl_ms(self) -> int:
        return round(self.delay * 1000)


@dataclasses.dataclass(frozen=True, slots=True)
class WorkQueue:
    """A service's queues: the work queue, its retry ladder and its dead queue.

    ``WorkQueue(PUSHER, retry_delays=(30, 120))`` — the ladder defaults to
    :data:`shared.settings.DEFAULT_RETRY_DELAYS`.
    """

    service: str
    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS

    def __post_init__(self) -> None:
        if self.service not in SERVICES:
            raise ValueError(f"unknown service {self.service!r}; expected one of {SERVICES}")
        delays = tuple(float(d) for d in self.retry_delays)
        names = [format_delay(d) for d in delays]  # validates
        if len(set(names)) != len(names):
            raise ValueError(f"retry delays must be distinct: {self.retry_delays!r}")
        object.__setattr__(self, "retry_delays", delays)

    @property
    def name(self) -> str:
        """The queue the service consumes."""
        return DISPATCHER_QUEUE if self.service == DISPATCHER else self.service

    @property
    def source_exchange(self) -> str:
        """The exchange that feeds the work queue."""
        return {DISPATCHER: EVENTS_EXCHANGE, PUSHER: PUSH_EXCHANGE,
                PULLER: PULL_EXCHANGE}[self.service]

    @property
    def dead_queue(self) -> str:
        return f"{self.service}.dead"

    @property
    def dead_exchange(self) -> str:
        return DEAD_EXCHANGE

    @property
    def dead_binding_key(self) -> str:
        """Binding of the dead queue on ``sync.dead`` (matches ``<service>`` too)."""
        return f"{self.service}.#"

    def dead_routing_key(self, original_routing_key: str | None = None) -> str:
        """Routing key on ``sync.dead``: ``<service>.<original routing key>``."""
        if original_routing_key:
            return f"{self.service}.{original_routing_key}"
        return self.service

    @property
    def retry_queues(self) -> tuple[RetryQueue, ...]:
        return tuple(
            RetryQueue(f"{self.service}.retry.{format_delay(d)}", d, self.name)
            for d in self.retry_delays
        )

    def retry_queue(self, rung: int) -> RetryQueue:
        """The retry queue of ladder rung ``rung`` (0-based). Raises ``IndexError``."""
        if rung < 0:
            raise IndexError(rung)
        return self.retry_queues[rung]


def work_queues(retry_delays: Sequence[float]) -> tuple[WorkQueue, ...]:
    """The three services' queues for a retry ladder."""
    return tuple(WorkQueue(s, tuple(retry_delays)) for s in SERVICES)


# --------------------------------------------------------------------------- declaration


def exchanges() -> tuple[Exchange, ...]:
    """Every exchange bss-sync uses (durable topics)."""
    return tuple(
        Exchange(name, type="topic", durable=True)
        for name in (EVENTS_EXCHANGE, PUSH_EXCHANGE, PULL_EXCHANGE, DEAD_EXCHANGE)
    )


def work_queue_arguments(queue: WorkQueue, delivery_limit: int) -> dict[str, Any]:
    """Arguments of a quorum work queue."""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": DEAD_EXCHANGE,
        "x-dead-letter-routing-key": queue.dead_routing_key(),
    }


def retry_queue_arguments(retry: RetryQueue) -> dict[str, Any]:
    """Arguments of a classic delayed-retry queue."""
    return {
        "x-queue-type": "classic",
        "x-message-ttl": retry.ttl_ms,
        "x-dead-letter-exchange": DEFAULT_EXCHANGE,
        "x-dead-letter-routing-key": retry.work_queue,
    }


def queues_of(queue: WorkQueue, delivery_limit: int) -> list[Queue]:
    """kombu declarations for one service: work, retry and dead queues with bindings."""
    source = Exchange(queue.source_exchange, type="topic", durable=True)
    dead = Exchange(DEAD_EXCHANGE, type="topic", durable=True)
    declared = [
        Queue(queue.name, bindings=[binding(source, routing_key="#")], durable=True,
              queue_arguments=work_queue_arguments(queue, delivery_limit)),
    ]
    declared += [
        Queue(r.name, durable=True, queue_arguments=retry_queue_arguments(r))
        for r in queue.retry_queues
    ]
    declared.append(
        Queue(queue.dead_queue, bindings=[binding(dead, routing_key=queue.dead_binding_key)],
              durable=True, queue_arguments={"x-queue-type": "quorum"})
    )
    return declared


def topology(retry_delays: Sequence[float], delivery_limit: int) -> tuple[list[Exchange],
                                                                        list[Queue]]:
    """The whole topology as kombu entities (nothing declared)."""
    queues: list[Queue] = []
    for queue in work_queues(retry_delays):
        queues += queues_of(queue, delivery_limit)
    return list(exchanges()), queues


def describe(entity: Exchange | Queue) -> str:
    """One line for an operator: name, type and arguments."""
    if isinstance(entity, Exchange):
        return f"exchange {entity.name} ({entity.type})"
    args = dict(entity.queue_arguments or {})
    kind = args.pop("x-queue-type", "classic")
    extra = " ".join(f"{k}={v!r}" for k, v in sorted(args.items()))
    binds = ", ".join(f"{b.exchange.name}:{b.routing_key}" for b in entity.bindings)
    return (f"queue {entity.name} ({kind}) {extra}".rstrip()
            + (f" bound {binds}" if binds else ""))


def declare_topology(
    amqp_url: str,
    retry_delays: Sequence[float],
    delivery_limit: int,
    *,
    timeout: float = DECLARE_TIMEOUT,
) -> list[str]:
    """Declare every exchange, queue and binding; return one line per entity declared.

    Idempotent: declaring the same topology again changes nothing. Raises
    :class:`TopologyConflict` listing every existing entity whose arguments differ
    from the declared ones (RabbitMQ's PRECONDITION_FAILED), and
    ``InfrastructureError`` when the broker cannot be reached.
    """
    from shared.errors import InfrastructureError

    entities: list[Exchange | Queue] = []
    ex, qs = topology(retry_delays, delivery_limit)
    entities += ex
    entities += qs
    conflicts: list[str] = []
    try:
        with Connection(amqp_url, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            _declare_all(conn, entities, conflicts)
    except TopologyConflict:
        raise
    except Exception as exc:
        if isinstance(exc, OSError | ConnectionError) or _is_amqp_error(exc):
            raise InfrastructureError(f"cannot declare the topology on {broker_at(amqp_url)}: "
                                      f"{redact(str(exc)) or type(exc).__name__}") from exc
        raise
    if conflicts:
        raise TopologyConflict(
            "RabbitMQ refused to redeclare with different arguments: " + "; ".join(conflicts)
            + ". Existing queues keep the arguments they were created with: drain and delete"
            " the queue (or restore the previous setting) to apply the new ones."
        )
    return [describe(e) for e in entities]


def _declare_all(conn: Connection, entities: Iterable[Exchange | Queue],
                 conflicts: list[str]) -> None:
    """Declare each entity; a refused one is recorded and a fresh channel used next."""
    import amqp.exceptions

    channel = conn.channel()
    try:
        for entity in entities:
            try:
                entity(channel).declare()
            except amqp.exceptions.PreconditionFailed as exc:
                conflicts.append(_conflict_text(entity, exc))
                channel = conn.channel()  # the refused channel is closed by the broker
    finally:
        if channel.is_open:
            channel.close()


def _conflict_text(entity: Exchange | Queue, exc: Exception) -> str:
    kind = "exchange" if isinstance(entity, Exchange) else "queue"
    reason = getattr(exc, "reply_text", None) or str(exc)
    return f"{kind} {entity.name!r}: {reason}"


def _is_amqp_error(exc: Exception) -> bool:
    import amqp.exceptions
    import kombu.exceptions

    return isinstance(exc, amqp.exceptions.AMQPError | kombu.exceptions.KombuError)
