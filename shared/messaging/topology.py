"""The RabbitMQ topology (docs/architecture.md §4): the only module that spells exchange
and queue names.

Every other module (services, tooling, tests, benchmarks) imports the names from
here: the constants below, or :class:`WorkQueue` for a service's work, retry and
dead queues. Declared as data with kombu, idempotently, by :func:`declare_topology`
at service start, and by ``bss-sync topology declare``
(:mod:`shared.messaging.migration`, which also migrates queues whose arguments
changed)::

    bss.events (topic) ──#──▶ dispatcher.events (quorum)
    sync.push  (topic) ──#──▶ pusher            (quorum)
    sync.pull  (topic) ──#──▶ puller            (quorum)
    sync.dead  (topic) ──<service>.#──▶ <service>.dead (quorum)
                                        <service>.parked (quorum, no binding;
                                                          pusher and puller)

    <service>.retry.<delay>  quorum, x-message-ttl = delay, dead-letters back to
                             the work queue through the default exchange

Every work queue has ``x-delivery-limit`` and dead-letters to ``sync.dead`` with
routing key ``<service>``: the safety net for a message that crashes its consumer
again and again. The consumer itself sends failed messages to the retry and dead
queues (:mod:`shared.messaging.settle`), so the safety net only catches what the
runtime could not settle.

Every queue that dead-letters does it **at least once** (``x-dead-letter-strategy:
at-least-once``, which RabbitMQ honours only for quorum queues with ``x-overflow:
reject-publish``, from 3.10 on): the broker moves the message with confirms and
keeps it in the source queue until the target has it, so a broker restart or a
target that is briefly missing loses nothing (classic queues dead-letter at most
once: the copies in a retry queue could vanish when RabbitMQ stopped).

``<service>.parked`` holds the dead letters that the daily redelivery found older
than its maximum age (off by default; :mod:`shared.messaging.redelivery`), published
there through the default exchange; nothing consumes it.

Retry delays are per-queue TTLs, one queue per rung of the ladder, named after the
delay (``pusher.retry.30s``, ``pusher.retry.2m``). Changing the ladder therefore
declares *new* retry queues: the old ones keep working (their messages still
return to the work queue when their TTL expires) and can be deleted once empty.
RabbitMQ refuses to redeclare an existing queue with other arguments (it checks
every one this module sets); :class:`TopologyConflict` says which queue and
argument differ, and that ``bss-sync topology declare`` migrates them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from kombu import Connection, Exchange, Queue, binding

from shared.errors import ConfigurationError
from shared.logging import redact
from shared.messaging.amqp_url import broker_at, broker_urls, kombu_hostname
from shared.settings import DEFAULT_RETRY_DELAYS

EVENTS_EXCHANGE = "bss.events"
PUSH_EXCHANGE = "sync.push"
PULL_EXCHANGE = "sync.pull"
DEAD_EXCHANGE = "sync.dead"
#: ``<service>.dead`` and ``<service>.parked``.
DEAD_SUFFIX = ".dead"
PARKED_SUFFIX = ".parked"
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
#: What makes a quorum queue dead-letter at least once (RabbitMQ 3.10+).
AT_LEAST_ONCE = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
#: Where ``bss-sync topology declare`` keeps a queue's messages while it replaces the queue.
HOLDING_SUFFIX = ".migrating"
#: The command that brings an installation's queues to this topology.
MIGRATE_COMMAND = "bss-sync topology declare"
#: Streams declared (and deleted at once) to check that the broker can dead-letter at
#: least once (:func:`require_at_least_once`).
FEATURE_CHECK_PREFIX = "bss-sync.feature-check."


class TopologyConflict(ConfigurationError):
    """The broker holds queues other than this version declares: arguments that differ
    (RabbitMQ refused the redeclaration), or a migration left unfinished."""


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
        return f"{self.service}{DEAD_SUFFIX}"

    @property
    def parked_queue(self) -> str:
        """Where the daily redelivery parks dead letters older than its maximum age."""
        return f"{self.service}{PARKED_SUFFIX}"

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


def holding_queue(name: str) -> str:
    """The queue that holds ``name``'s messages while a migration replaces it."""
    return f"{name}{HOLDING_SUFFIX}"


# --------------------------------------------------------------------------- declaration


def exchanges() -> tuple[Exchange, ...]:
    """Every exchange bss-sync uses (durable topics)."""
    return tuple(
        Exchange(name, type="topic", durable=True)
        for name in (EVENTS_EXCHANGE, PUSH_EXCHANGE, PULL_EXCHANGE, DEAD_EXCHANGE)
    )


def work_queue_arguments(queue: WorkQueue, delivery_limit: int) -> dict[str, Any]:
    """Arguments of a quorum work queue: dead-letters to ``sync.dead`` at least once."""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": DEAD_EXCHANGE,
        "x-dead-letter-routing-key": queue.dead_routing_key(),
        **AT_LEAST_ONCE,
    }


def retry_queue_arguments(retry: RetryQueue) -> dict[str, Any]:
    """Arguments of a quorum delayed-retry queue: its messages expire after the delay
    into the work queue (through the default exchange), at least once."""
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": retry.ttl_ms,
        "x-dead-letter-exchange": DEFAULT_EXCHANGE,
        "x-dead-letter-routing-key": retry.work_queue,
        **AT_LEAST_ONCE,
    }


def queues_of(queue: WorkQueue, delivery_limit: int) -> list[Queue]:
    """kombu declarations for one service: work, retry, dead and parked queues with
    bindings."""
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
    if queue.service != DISPATCHER:  # BSS events are not redelivered, so never parked
        declared.append(Queue(queue.parked_queue, durable=True,
                              queue_arguments={"x-queue-type": "quorum"}))
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


@dataclasses.dataclass(frozen=True, slots=True)
class Conflict:
    """An entity RabbitMQ refused to redeclare, with its reason (PRECONDITION_FAILED)."""

    entity: Exchange | Queue
    reason: str

    def __str__(self) -> str:
        kind = "exchange" if isinstance(self.entity, Exchange) else "queue"
        return f"{kind} {self.entity.name!r}: {self.reason.removeprefix('PRECONDITION_FAILED - ')}"


def declare_topology(
    amqp_url: str,
    retry_delays: Sequence[float],
    delivery_limit: int,
    *,
    timeout: float = DECLARE_TIMEOUT,
) -> list[str]:
    """Declare every exchange, queue and binding; return one line per entity declared.

    Idempotent: declaring the same topology again changes nothing. Raises
    :class:`TopologyConflict` when the broker holds queues other than these — an
    existing queue whose arguments differ (RabbitMQ's PRECONDITION_FAILED; it
    compares every argument set here, the queue type and the dead-letter strategy
    included) or a holding queue of an unfinished migration — saying that
    ``bss-sync topology declare`` fixes it; ``InfrastructureError`` when the broker
    cannot be reached.
    """
    ex, qs = topology(retry_delays, delivery_limit)
    entities: list[Exchange | Queue] = [*ex, *qs]
    with open_declaring_connection(amqp_url, timeout) as conn:
        conflicts = declare_entities(conn, entities)
        unfinished = [] if conflicts else existing_queues(conn, [holding_queue(q.name)
                                                                 for q in qs])
    if conflicts:
        raise TopologyConflict(conflict_message(conflicts, amqp_url))
    if unfinished:
        raise TopologyConflict(
            f"a migration of the queues on {broker_at(amqp_url)} was interrupted: "
            f"{', '.join(repr(q) for q in unfinished)} still hold messages moved out of "
            f"their queues; run `{MIGRATE_COMMAND}` to finish it")
    return [describe(e) for e in entities]


def require_at_least_once(amqp_url: str, *, timeout: float = DECLARE_TIMEOUT) -> None:
    """Raise :class:`TopologyConflict` unless the broker dead-letters at least once.

    That needs RabbitMQ 3.10 or later with the ``stream_queue`` feature flag enabled
    (required from 3.12; a node upgraded from 3.8 or 3.9 may have it off). Without
    it RabbitMQ accepts the queues' ``x-dead-letter-strategy: at-least-once`` and
    silently dead-letters at most once, so the check declares a stream queue of
    its own, which RabbitMQ refuses then, and deletes it. ``InfrastructureError``
    when the broker cannot be reached.
    """
    import amqp.exceptions

    name = f"{FEATURE_CHECK_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
    with open_declaring_connection(amqp_url, timeout) as conn:
        channel = conn.channel()
        try:
            channel.queue_declare(name, durable=True, auto_delete=False,
                                  arguments={"x-queue-type": "stream"})
        except amqp.exceptions.AMQPError as exc:
            reason = getattr(exc, "reply_text", None) or str(exc)
            raise TopologyConflict(
                f"{broker_at(amqp_url)} cannot dead-letter at least once: it refused a "
                f"stream queue ({reason}); bss-sync needs RabbitMQ 3.10 or later with the "
                "stream_queue feature flag enabled (`rabbitmqctl enable_feature_flag "
                "stream_queue`)") from exc
        channel.queue_delete(name)
        channel.close()


def conflict_message(conflicts: Sequence[Conflict], amqp_url: str) -> str:
    """One line: what differs (the first refusal in full, then the other names) and the
    command that migrates the queues."""
    first, rest = conflicts[0], conflicts[1:]
    more = (f" (and {len(rest)} more: {', '.join(c.entity.name for c in rest)})"
            if rest else "")
    return (f"the topology on {broker_at(amqp_url)} is not the one this version declares: "
            f"{first}{more}; run `{MIGRATE_COMMAND}` to migrate the queues (it moves "
            "their messages into queues with the expected arguments; stop the services "
            "first)")


@contextlib.contextmanager
def open_declaring_connection(amqp_url: str, timeout: float = DECLARE_TIMEOUT,
                              ) -> Iterator[Connection]:
    """An open kombu connection (to the first node of ``amqp_url`` that answers); broker
    and network failures raise ``InfrastructureError`` naming the broker (password
    masked). Publishes on it are confirmed."""
    from shared.errors import InfrastructureError

    try:
        with Connection(kombu_hostname(amqp_url), connect_timeout=timeout,
                        transport_options={"confirm_publish": True}) as conn:
            conn.ensure_connection(max_retries=len(broker_urls(amqp_url)), timeout=timeout)
            yield conn
    except (ConfigurationError, InfrastructureError):
        raise
    except Exception as exc:
        if isinstance(exc, OSError | ConnectionError) or _is_amqp_error(exc):
            raise InfrastructureError(f"cannot declare the topology on {broker_at(amqp_url)}: "
                                      f"{redact(str(exc)) or type(exc).__name__}") from exc
        raise


def declare_entities(conn: Connection, entities: Iterable[Exchange | Queue]) -> list[Conflict]:
    """Declare each entity; return those RabbitMQ refused (a fresh channel after each)."""
    import amqp.exceptions

    conflicts: list[Conflict] = []
    channel = conn.channel()
    try:
        for entity in entities:
            try:
                entity(channel).declare()
            except amqp.exceptions.PreconditionFailed as exc:
                conflicts.append(Conflict(entity, getattr(exc, "reply_text", None) or str(exc)))
                channel = conn.channel()  # the refused channel is closed by the broker
    finally:
        if channel.is_open:
            channel.close()
    return conflicts


def existing_queues(conn: Connection, names: Iterable[str]) -> list[str]:
    """Those of ``names`` that exist (a passive declare each)."""
    import amqp.exceptions

    found: list[str] = []
    channel = conn.channel()
    try:
        for name in names:
            try:
                channel.queue_declare(name, passive=True)
                found.append(name)
            except amqp.exceptions.NotFound:
                channel = conn.channel()  # a failed passive declare closes the channel
    finally:
        if channel.is_open:
            channel.close()
    return found


def _is_amqp_error(exc: Exception) -> bool:
    import amqp.exceptions
    import kombu.exceptions

    return isinstance(exc, amqp.exceptions.AMQPError | kombu.exceptions.KombuError)
