"""``bss-sync topology declare``: bring an installation's queues to the topology this
version declares, without losing what they hold (docs/architecture.md §4).

RabbitMQ fixes a queue's arguments when it is created, so a queue whose arguments
differ from :mod:`shared.messaging.topology`'s (a classic retry queue of a version
before at-least-once dead-lettering, a work queue without ``x-dead-letter-strategy``,
a changed ``DELIVERY_LIMIT``) is replaced, and its messages carried across:

1. a holding queue ``<queue>.migrating`` (quorum, no TTL, no dead-lettering) is
   declared with the queue's bindings, then the queue is unbound: nothing published
   meanwhile is lost (one published between the two steps may land in both);
2. every message moves to the holding queue: published with confirms, the original
   acked only once its copy is confirmed (an interruption may leave a duplicate,
   never a gap); one that came through an exchange keeps where it came from in
   ``x-original-exchange`` / ``x-original-routing-key``, as retry copies do;
3. the old queue is deleted, the new one declared with its bindings, the holding
   queue unbound, and its messages moved into the new queue the same way;
4. the holding queue is deleted.

An interrupted migration is finished by the next run (a holding queue found beside
an up-to-date queue is emptied into it), and the services refuse to start while a
holding queue exists. Nothing is migrated while a work queue has consumers (they
would lose their unacked messages, and they publish retry copies): the services
must be stopped first. Retry queues go before work queues, so that no old retry
queue expires at most once into a work queue that is being replaced; a waiting
retry copy waits its whole delay again in the new retry queue.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import amqp
import amqp.exceptions
from kombu import Connection, Queue

from shared.errors import ConfigurationError
from shared.messaging.settle import H_ORIGINAL_EXCHANGE, H_ORIGINAL_ROUTING_KEY
from shared.messaging.topology import (
    DECLARE_TIMEOUT,
    DEFAULT_EXCHANGE,
    MIGRATE_COMMAND,
    Conflict,
    TopologyConflict,
    declare_entities,
    describe,
    existing_queues,
    holding_queue,
    open_declaring_connection,
    require_at_least_once,
    topology,
    work_queues,
)

MAX_DELETE_ROUNDS = 5
#: Set by a quorum queue on each delivery (how often *it* delivered the message).
H_DELIVERY_COUNT = "x-delivery-count"


class MigrationRefused(ConfigurationError):
    """The queues cannot be migrated now (consumers attached); nothing was changed."""


@dataclasses.dataclass(frozen=True, slots=True)
class Migrated:
    """One queue replaced (or a holding queue emptied back) and how many messages it
    received from the migration."""

    queue: str
    moved: int
    reason: str

    def __str__(self) -> str:
        noun = "message" if self.moved == 1 else "messages"
        return f"migrated queue {self.queue}: {self.moved} {noun} moved ({self.reason})"


def migrate_topology(
    amqp_url: str, retry_delays: Sequence[float], delivery_limit: int,
    *, timeout: float = DECLARE_TIMEOUT,
) -> tuple[list[str], list[Migrated]]:
    """Declare the topology, migrating every queue whose arguments differ.

    Returns the declared entities (one line each, as :func:`declare_topology`) and
    what was migrated. Raises :class:`TopologyConflict` when the broker cannot
    dead-letter at least once (:func:`require_at_least_once`),
    :class:`MigrationRefused` when a queue needs migrating
    while a work queue has consumers, :class:`TopologyConflict` when an exchange
    differs (exchanges hold no messages, but bss-sync will not delete what others may
    publish to), ``InfrastructureError`` when the broker cannot be reached or fails
    mid-way (run again: a migration resumes where it stopped).
    """
    require_at_least_once(amqp_url, timeout=timeout)
    exchanges, queues = topology(retry_delays, delivery_limit)
    with open_declaring_connection(amqp_url, timeout) as conn:
        refused = declare_entities(conn, exchanges)
        if refused:
            raise TopologyConflict("; ".join(map(str, refused)) + ": delete or rename that "
                                   f"exchange, then run `{MIGRATE_COMMAND}` again")
        conflicts = declare_entities(conn, queues)
        holding = existing_queues(conn, [holding_queue(q.name) for q in queues])
        if conflicts or holding:
            _refuse_while_consumed(conn, retry_delays)
        migrated = [_replace(conn, c, timeout) for c in sorted(conflicts, key=_retry_first)]
        replaced = {m.queue for m in migrated}
        migrated += [_finish(conn, q, timeout) for q in queues
                     if holding_queue(q.name) in holding and q.name not in replaced]
    return [describe(e) for e in (*exchanges, *queues)], migrated


def _retry_first(conflict: Conflict) -> int:
    """Retry queues, then work queues, then dead and parked queues."""
    name = conflict.entity.name
    return 0 if ".retry." in name else 2 if name.endswith((".dead", ".parked")) else 1


def _refuse_while_consumed(conn: Connection, retry_delays: Sequence[float]) -> None:
    consumed = []
    for queue in work_queues(retry_delays):
        state = _state(conn, queue.name)
        if state is not None and state[1]:
            consumed.append(f"{queue.name} has {state[1]}")
    if consumed:
        raise MigrationRefused(
            "queues must be migrated but the services still consume "
            f"({'; '.join(consumed)} consumers): stop every dispatcher, pusher and puller "
            f"(older versions included), then run `{MIGRATE_COMMAND}` again")


def _replace(conn: Connection, conflict: Conflict, timeout: float) -> Migrated:
    """Steps 1 to 4 of the module docstring for one queue RabbitMQ refused to redeclare."""
    queue = conflict.entity
    assert isinstance(queue, Queue)
    holding = _holding(queue)
    channel = conn.channel()
    try:
        holding(channel).declare()
        for b in queue.bindings:
            channel.queue_unbind(queue.name, b.exchange.name, b.routing_key)
        move_messages(conn, queue.name, holding.name, timeout=timeout)
        _delete_drained(conn, queue.name, holding.name, timeout)
        queue(channel).declare()
        for b in queue.bindings:
            channel.queue_unbind(holding.name, b.exchange.name, b.routing_key)
        moved = move_messages(conn, holding.name, queue.name, timeout=timeout)
        moved += _delete_drained(conn, holding.name, queue.name, timeout)
    finally:
        if channel.is_open:
            channel.close()
    return Migrated(queue.name, moved, f"was {conflict}")


def _finish(conn: Connection, queue: Queue, timeout: float) -> Migrated:
    """Empty the holding queue an interrupted migration left into the (new) queue."""
    holding = _holding(queue)
    channel = conn.channel()
    try:
        for b in queue.bindings:
            channel.queue_unbind(holding.name, b.exchange.name, b.routing_key)
    finally:
        channel.close()
    moved = move_messages(conn, holding.name, queue.name, timeout=timeout)
    moved += _delete_drained(conn, holding.name, queue.name, timeout)
    return Migrated(queue.name, moved, f"finished an interrupted migration: from {holding.name}")


def _holding(queue: Queue) -> Queue:
    return Queue(holding_queue(queue.name), bindings=list(queue.bindings), durable=True,
                 queue_arguments={"x-queue-type": "quorum"})


def _delete_drained(conn: Connection, name: str, into: str, timeout: float) -> int:
    """Delete ``name`` once empty and unconsumed; what arrived meanwhile goes to ``into``.

    Returns how many late messages were moved. (Quorum queues do not support
    ``if-empty``, so the check is a passive declare just before the delete.)
    """
    moved = 0
    for _ in range(MAX_DELETE_ROUNDS):
        state = _state(conn, name)
        if state is None:
            return moved
        messages, consumers = state
        if consumers:
            raise MigrationRefused(f"queue {name!r} got {consumers} consumers during the "
                                   f"migration: stop them, then run `{MIGRATE_COMMAND}` again")
        if messages:
            moved += move_messages(conn, name, into, timeout=timeout)
            continue
        channel = conn.channel()
        try:
            channel.queue_delete(name)
        finally:
            channel.close()
        return moved
    raise MigrationRefused(f"queue {name!r} keeps receiving messages during the migration: "
                           f"stop what publishes to it, then run `{MIGRATE_COMMAND}` again")


def _state(conn: Connection, name: str) -> tuple[int, int] | None:
    """(ready messages, consumers) of ``name``, or None when it does not exist."""
    channel = conn.channel()
    try:
        ok = channel.queue_declare(name, passive=True)
    except amqp.exceptions.NotFound:
        return None
    finally:
        if channel.is_open:
            channel.close()
    return ok.message_count, ok.consumer_count


def move_messages(conn: Connection, source: str, target: str,
                  *, timeout: float = DECLARE_TIMEOUT) -> int:
    """Move every ready message of ``source`` to ``target`` (through the default
    exchange); return how many.

    Each copy keeps the body byte for byte and every property and header (but the
    source queue's ``x-delivery-count``), and is confirmed by the broker before its
    original is acked. Raises ``amqp.exceptions.AMQPError`` (a nack, an unroutable
    copy, a closed channel): what was not acked stays in ``source``.
    """
    reader, writer = conn.channel(), conn.channel()
    reader.auto_decode = False  # the body as bytes, exactly as it was published
    returned: list[str] = []
    writer.events["basic_return"].add(lambda exc, *_: returned.append(str(exc)))
    moved = 0
    try:
        while (message := reader.basic_get(source, no_ack=False)) is not None:
            writer.basic_publish(_copy(message), exchange=DEFAULT_EXCHANGE, routing_key=target,
                                 mandatory=True, confirm_timeout=timeout)
            if returned:
                raise amqp.exceptions.ChannelError(f"queue {target!r} refused a message: "
                                                   f"{returned[0]}")
            reader.basic_ack(message.delivery_tag)
            moved += 1
    finally:
        for channel in (reader, writer):
            if channel.is_open:
                channel.close()  # unacked messages return to the source queue
    return moved


def _copy(message: amqp.Message) -> amqp.Message:
    properties: dict[str, Any] = dict(message.properties)
    headers = dict(properties.pop("application_headers", None) or {})
    headers.pop(H_DELIVERY_COUNT, None)  # the source queue's count, not the message's
    info = message.delivery_info
    if info.get("exchange"):  # routed by a binding; copies travel through the default one
        headers.setdefault(H_ORIGINAL_EXCHANGE, info["exchange"])
        headers.setdefault(H_ORIGINAL_ROUTING_KEY, info["routing_key"])
    body = message.body
    return amqp.Message(body if isinstance(body, bytes) else bytes(body),
                        application_headers=headers, **properties)
