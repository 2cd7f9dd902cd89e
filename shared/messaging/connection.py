"""pika's asyncio adapter turned into awaitables: open a connection, a channel, call an RPC.

pika reports everything through callbacks; these helpers resolve futures from them
so the rest of the runtime reads top to bottom. Failures of the broker or of the
network surface as :class:`~shared.errors.InfrastructureError` (password masked).
:class:`Backoff` is the capped, jittered delay between reconnection attempts.
An ``AMQP_URL`` listing the nodes of a cluster is connected to the first node that
answers, starting at a random one (docs/architecture.md §7).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Callable
from typing import Any

import pika
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.channel import Channel

from shared.errors import InfrastructureError
from shared.logging import redact
from shared.messaging.amqp_url import broker_at, broker_urls

CONNECT_TIMEOUT = 10.0
HEARTBEAT = 30


class AmqpConnection:
    """One open AMQP connection; :attr:`closed` resolves with the reason once it is gone."""

    def __init__(self, connection: AsyncioConnection, closed: asyncio.Future[BaseException],
                 name: str) -> None:
        self.raw = connection
        self.closed = closed
        self.name = name

    @property
    def is_open(self) -> bool:
        return not self.closed.done() and self.raw.is_open

    async def channel(self) -> Channel:
        """A new channel. Raises :class:`InfrastructureError` if the connection is gone."""
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[Channel] = loop.create_future()
        try:
            self.raw.channel(on_open_callback=lambda ch: _resolve(opened, ch))
        except pika.exceptions.AMQPError as exc:
            raise translate(exc, "open a channel") from exc
        done, _ = await asyncio.wait({opened, self.closed}, return_when=asyncio.FIRST_COMPLETED,
                                     timeout=CONNECT_TIMEOUT)
        if opened in done:
            return opened.result()
        raise InfrastructureError("the RabbitMQ connection closed while opening a channel")

    async def close(self) -> None:
        """Close the connection (idempotent) and wait until it is closed."""
        if not self.closed.done():
            if self.raw.is_open:
                self.raw.close()
            await asyncio.wait({self.closed}, timeout=CONNECT_TIMEOUT)


async def open_connection(amqp_url: str, name: str) -> AmqpConnection:
    """Connect to ``amqp_url``; ``name`` shows in the management UI's connection list.

    With several URLs (a cluster's nodes), each is tried in turn from a random one
    (so that a service's processes spread over the nodes) until one answers. Raises
    :class:`InfrastructureError` when no broker is reachable or each refuses us.
    """
    urls = broker_urls(amqp_url)
    first = random.randrange(len(urls))
    failures: list[InfrastructureError] = []
    for url in urls[first:] + urls[:first]:
        try:
            return await _open_one(url, name)
        except InfrastructureError as exc:
            failures.append(exc)
    if len(failures) == 1:
        raise failures[0]
    reasons = "; ".join(str(f).removeprefix("cannot connect to ") for f in failures)
    raise InfrastructureError(f"cannot connect to any node of {broker_at(amqp_url)}: {reasons}")


async def _open_one(amqp_url: str, name: str) -> AmqpConnection:
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[AsyncioConnection] = loop.create_future()
    closed: asyncio.Future[BaseException] = loop.create_future()
    params = pika.URLParameters(amqp_url)
    params.client_properties = {"connection_name": name, "product": "bss-sync"}
    params.heartbeat = HEARTBEAT
    params.blocked_connection_timeout = 60
    params.socket_timeout = CONNECT_TIMEOUT
    params.connection_attempts = 1

    def on_open_error(_conn: Any, exc: BaseException) -> None:
        if not opened.done():
            opened.set_exception(translate(_root_cause(exc), f"connect to {broker_at(amqp_url)}"))

    def on_close(_conn: Any, reason: BaseException) -> None:
        _resolve(closed, reason)

    conn = AsyncioConnection(params, on_open_callback=lambda c: _resolve(opened, c),
                             on_open_error_callback=on_open_error, on_close_callback=on_close,
                             custom_ioloop=loop)
    try:
        await asyncio.wait_for(opened, CONNECT_TIMEOUT)
    except TimeoutError as exc:
        with contextlib.suppress(Exception):
            conn.close()
        raise InfrastructureError(
            f"cannot connect to {broker_at(amqp_url)}: no answer in {CONNECT_TIMEOUT:g} s") from exc
    coalesce_writes(conn)
    return AmqpConnection(conn, closed, name)


def coalesce_writes(conn: Any) -> None:
    """Make ``conn`` send what it buffered in one ``send`` per turn of the event loop.

    pika buffers every frame apart (a publish is three) and sends each with a
    syscall of its own when the socket turns writable; on this kind of machine a
    send that wakes the broker costs tens of microseconds, so joining the buffers
    first cuts the dispatcher's CPU per event by about a fifth. Only this
    connection's transport is changed (pika itself is left as it is).
    """
    transport = getattr(conn, "_transport", None)
    produce = getattr(transport, "_produce", None)
    buffers = getattr(transport, "_tx_buffers", None)
    if produce is None or buffers is None:
        return  # not the pika transport this was written for: leave it alone

    def produce_joined() -> None:
        if len(buffers) > 1:
            joined = b"".join(buffers)
            buffers.clear()
            buffers.append(joined)
        produce()

    transport._produce = produce_joined


def connection_name(service: str) -> str:
    """``bss-sync <service> <pid>``: unique enough to find one process's connection."""
    return f"bss-sync {service} {os.getpid()}"


async def rpc(call: Callable[[Callable[[Any], None]], None], closed: asyncio.Future[Any],
              what: str) -> Any:
    """Run a pika RPC that reports through ``callback=`` and await its reply frame.

    ``call`` receives the callback to pass on. Raises :class:`InfrastructureError`
    when the connection closes (or the channel is closed by the broker) first.
    """
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[Any] = loop.create_future()
    try:
        call(lambda frame: _resolve(reply, frame))
    except pika.exceptions.AMQPError as exc:
        raise translate(exc, what) from exc
    done, _ = await asyncio.wait({reply, closed}, return_when=asyncio.FIRST_COMPLETED)
    if reply in done:
        return reply.result()
    reason = closed.result() if not closed.cancelled() else None
    raise InfrastructureError(f"cannot {what}: {redact(str(reason)) or 'channel closed'}")


def channel_closed_future(channel: Channel) -> asyncio.Future[BaseException]:
    """A future resolved with the reason when ``channel`` closes."""
    closed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
    channel.add_on_close_callback(lambda _ch, reason: _resolve(closed, reason))
    return closed


def _root_cause(exc: BaseException) -> BaseException:
    """The socket error inside pika's connection-workflow wrappers (their own text is a
    paragraph: ``AMQPConnectionWorkflowFailed: 1 exceptions in all; last exception - …``)."""
    for _ in range(4):
        inner = getattr(exc, "exceptions", None)  # AMQPConnectionWorkflowFailed
        if inner:
            exc = inner[-1]
            continue
        if (isinstance(exc, pika.exceptions.AMQPConnectionError) and exc.args
                and isinstance(exc.args[0], BaseException)):
            exc = exc.args[0]  # AMQPConnectionError(workflow error), socket connect errors
            continue
        nested = getattr(exc, "exception", None)  # AMQPConnectorSocketConnectError
        if isinstance(nested, BaseException):
            exc = nested
            continue
        break
    return exc


def translate(exc: BaseException, doing: str) -> InfrastructureError:
    """A pika/socket failure as our :class:`InfrastructureError` (password masked)."""
    detail = redact(str(exc)) or type(exc).__name__
    return InfrastructureError(f"cannot {redact(doing)}: {detail}")


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


class Backoff:
    """Capped exponential backoff with jitter: ``uniform(c/2, c)``, ``c = min(cap, base·2ⁿ)``."""

    def __init__(self, base: float = 0.5, cap: float = 30.0) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(self.failures, 30)))
        self.failures += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0
