"""Synchronous RabbitMQ helpers for the CLI, tests and demos (kombu / py-amqp).

Long-running services use the asyncio publisher; these are for short scripts:
publish a few messages with confirms, count a queue exactly, and peek at
messages without removing them (dead letters, for an operator).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import amqp.exceptions
from kombu import Connection

from shared.errors import InfrastructureError
from shared.logging import redact
from shared.messaging.amqp_url import broker_at, broker_urls, kombu_hostname
from shared.messaging.publisher import CONTENT_TYPE, PERSISTENT, OutgoingMessage

TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class PeekedMessage:
    """A message looked at and left in its queue."""

    routing_key: str
    exchange: str
    message_id: str | None
    headers: dict[str, Any]
    body: bytes
    redelivered: bool


class QueueMissing(InfrastructureError):
    """The queue asked for does not exist (the topology was never declared there)."""

    def __init__(self, queue: str, amqp_url: str) -> None:
        super().__init__(f"queue {queue!r} does not exist on {broker_at(amqp_url)}")
        self.queue = queue


def _connection(amqp_url: str) -> Connection:
    """An open kombu connection (to the first node of ``amqp_url`` that answers).
    Raises :class:`InfrastructureError` naming the broker."""
    conn = Connection(kombu_hostname(amqp_url), connect_timeout=TIMEOUT,
                      transport_options={"confirm_publish": True})
    try:
        conn.ensure_connection(max_retries=len(broker_urls(amqp_url)), timeout=TIMEOUT)
    except Exception as exc:
        reason = redact(str(exc)) or type(exc).__name__
        raise InfrastructureError(f"cannot connect to {broker_at(amqp_url)}: {reason}") from exc
    return conn


def publish_blocking(amqp_url: str, messages: Iterable[OutgoingMessage]) -> int:
    """Publish persistent, mandatory messages, each confirmed; return how many.

    One confirm round trip per message: fine for tooling, not for services.
    Raises :class:`InfrastructureError` (unroutable messages included).
    """
    count = 0
    with _connection(amqp_url) as conn:
        channel = conn.default_channel
        returned: list[str] = []
        channel.events["basic_return"].add(
            lambda exc, exchange, routing_key, _msg: returned.append(f"{exchange}/{routing_key}"))
        for message in messages:
            channel.basic_publish(
                channel.prepare_message(
                    message.body, priority=None, content_type=CONTENT_TYPE,
                    content_encoding="utf-8", headers=dict(message.headers or {}),
                    properties={"delivery_mode": PERSISTENT, "message_id": message.message_id,
                                "correlation_id": message.correlation_id}),
                exchange=message.exchange, routing_key=message.routing_key, mandatory=True)
            if returned:
                raise InfrastructureError(f"no queue is bound for {returned[0]}")
            count += 1
    return count


def queue_depth(amqp_url: str, queue: str) -> int:
    """Ready messages in ``queue`` right now (exact; unacked ones are not counted).

    Raises :class:`QueueMissing` when the queue does not exist, else
    :class:`InfrastructureError`.
    """
    with _connection(amqp_url) as conn:
        try:
            return conn.default_channel.queue_declare(queue, passive=True).message_count
        except amqp.exceptions.NotFound as exc:
            raise QueueMissing(queue, amqp_url) from exc


def peek(amqp_url: str, queue: str, limit: int = 20) -> list[PeekedMessage]:
    """Up to ``limit`` messages from the head of ``queue``, left in the queue.

    They are fetched unacknowledged and returned to the queue when the channel
    closes, in their order. Raises :class:`QueueMissing` when the queue does not
    exist (whatever ``limit``), else :class:`InfrastructureError`.
    """
    seen: list[PeekedMessage] = []
    with _connection(amqp_url) as conn:
        channel = conn.channel()
        try:
            channel.queue_declare(queue, passive=True)
            for _ in range(limit):
                message = channel.basic_get(queue, no_ack=False)
                if message is None:
                    break
                info = message.delivery_info
                body = message.body  # py-amqp decodes it when a content encoding is set
                seen.append(PeekedMessage(
                    info.get("routing_key", ""), info.get("exchange", ""),
                    message.properties.get("message_id"), dict(message.headers or {}),
                    body.encode() if isinstance(body, str) else bytes(body),
                    bool(info.get("redelivered"))))
        except amqp.exceptions.NotFound as exc:
            raise QueueMissing(queue, amqp_url) from exc
        finally:
            if channel.is_open:
                channel.close()  # unacked messages go back to the queue
    return seen
