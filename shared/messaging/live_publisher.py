"""The publisher a consumer lends its handlers: always the current connection's.

The dispatcher's handlers publish push messages while they consume events. The
consumer reconnects under them, so they hold this facade rather than a
:class:`~shared.messaging.publisher.Publisher`: it forwards to the publisher of
the live connection and raises :class:`~shared.errors.InfrastructureError` (a
transient error: the message is retried) while there is none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from shared.errors import InfrastructureError
from shared.messaging.publisher import DEFAULT_WINDOW, OutgoingMessage, Publisher


class LivePublisher:
    """Forwards to the publisher of the consumer's current connection."""

    def __init__(self) -> None:
        self._current: Publisher | None = None

    def attach(self, publisher: Publisher) -> None:
        self._current = publisher

    def detach(self, publisher: Publisher) -> None:
        if self._current is publisher:
            self._current = None

    def detach_all(self) -> None:
        self._current = None

    def current(self) -> Publisher | None:
        """The live publisher, or ``None`` while disconnected."""
        current = self._current
        return current if current is not None and current.is_open else None

    def _require(self) -> Publisher:
        current = self.current()
        if current is None:
            raise InfrastructureError("not connected to RabbitMQ right now")
        return current

    async def publish(self, exchange: str, routing_key: str, body: bytes, *,
                      headers: Mapping[str, Any] | None = None, message_id: str | None = None,
                      correlation_id: str | None = None) -> None:
        """See :meth:`Publisher.publish`; raises ``InfrastructureError`` while disconnected."""
        await self._require().publish(exchange, routing_key, body, headers=headers,
                                      message_id=message_id, correlation_id=correlation_id)

    async def publish_many(self, messages: Iterable[OutgoingMessage], *,
                           window: int = DEFAULT_WINDOW) -> None:
        """See :meth:`Publisher.publish_many`; raises ``InfrastructureError`` while disconnected."""
        await self._require().publish_many(messages, window=window)
