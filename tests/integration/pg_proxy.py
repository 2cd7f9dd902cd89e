"""A PostgreSQL proxy of the test's own that cuts a connection at a commit.

:class:`CommitCutter` listens on ``127.0.0.1`` and relays each connection to the real
server, reading the wire protocol (v3, no TLS: the URL it gives says
``sslmode=disable``) message by message. It knows a transaction that wrote the audit
log, and the commit that ends it, whichever way the client writes and commits: a
statement inserting into ``audit_log`` on its own (simple query, or the extended
protocol's ``Bind`` of such a statement, committed at its ``Sync``), a ``COPY`` in
autocommit (committed by its ``CopyDone``), or a transaction block that wrote and is
ended by a query holding ``COMMIT``. Armed, it cuts the connection (both sides reset)
at the next such commit:

* ``cut_answers``: the commit reaches the server, which commits; its answer is dropped
  with the connection (the client cannot know whether its rows are stored);
* ``cut_requests``: the commit is dropped with the connection before the server sees
  it (the server rolls back).

With ``refusing`` set, every new connection is dropped at once (PostgreSQL down);
``refuse_after_cut`` sets it at the next cut. ``cuts`` and ``refused`` count what it
did. Runs on the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from urllib.parse import urlsplit, urlunsplit

_READY = b"Z"  # ReadyForQuery: its status byte says I(dle), T(ransaction) or E(rror)
_COPY_IN = b"G"  # CopyInResponse: the client may send rows
_ERROR = b"E"
_COPY_DONE = b"c"
_QUERY = b"Q"
_PARSE = b"P"
_BIND = b"B"
_SYNC = b"S"
_WRITES = b"INSERT INTO AUDIT_LOG"


class _Flow:
    """What one connection's transaction has done so far (as the server tells it)."""

    def __init__(self) -> None:
        self.status = b"I"
        self.copied = False  # wrote: COPY, or a statement inserting into audit_log
        self.failed = False
        #: The client's prepared statements (by name) that insert into audit_log.
        self.writing: set[bytes] = set()
        #: An implicit transaction that wrote, waiting for its Sync.
        self.bound = False


class CommitCutter:
    """See the module docstring; ``await start()``, then connect to :meth:`url`."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.cut_answers = 0
        self.cut_requests = 0
        self.cuts = 0
        self.refusing = False
        self.refuse_after_cut = False
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()

    @classmethod
    def before(cls, database_url: str) -> CommitCutter:
        parts = urlsplit(database_url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432)

    def url(self, database_url: str) -> str:
        """``database_url`` through the proxy (and without TLS, which it cannot read)."""
        parts = urlsplit(database_url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        netloc_new = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
        query = "&".join(q for q in (parts.query, "sslmode=disable&gssencmode=disable") if q)
        return urlunsplit((parts.scheme, netloc_new, parts.path, query, parts.fragment))

    async def start(self) -> CommitCutter:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for transport in list(self._transports):
            transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            self.refused += 1
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        pair = (writer.transport, up_writer.transport)
        self._transports.update(pair)
        flow = _Flow()
        try:
            await asyncio.gather(self._from_client(reader, up_writer, flow),
                                 self._from_server(up_reader, writer, flow))
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for transport in pair:
                transport.abort()
                self._transports.discard(transport)

    def _cut(self) -> None:
        self.cuts += 1
        self.refusing = self.refusing or self.refuse_after_cut
        raise ConnectionResetError("cut by the test's proxy")

    async def _from_client(self, reader: asyncio.StreamReader, up: asyncio.StreamWriter,
                           flow: _Flow) -> None:
        (length,) = struct.unpack("!I", await reader.readexactly(4))  # the startup message
        up.write(struct.pack("!I", length) + await reader.readexactly(length - 4))
        while True:
            kind, message = await _read_message(reader)
            commits = self._commits(kind, message, flow)
            if commits and self.cut_requests > 0:
                self.cut_requests -= 1
                self._cut()
            up.write(message)
            await up.drain()

    @staticmethod
    def _commits(kind: bytes, message: bytes, flow: _Flow) -> bool:
        """Whether the client's ``message`` commits a transaction that wrote (noting
        on the way the statements and binds that write)."""
        if kind == _PARSE:
            name, query = message[5:].split(b"\0", 2)[:2]
            if _WRITES in query.upper():
                flow.writing.add(name)
            else:
                flow.writing.discard(name)
            return False
        if kind == _BIND:
            statement = message[5:].split(b"\0", 2)[1]
            if statement in flow.writing and flow.status == b"I":
                flow.copied = flow.bound = True
            return False
        if kind == _SYNC and flow.bound:
            flow.bound = False
            return True
        if kind == _QUERY and flow.status == b"I" and _WRITES in message.upper():
            flow.copied = True
            return True
        return ((kind == _COPY_DONE and flow.status == b"I")  # autocommit COPY
                or (kind == _QUERY and b"COMMIT" in message.upper() and flow.copied))

    async def _from_server(self, up: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           flow: _Flow) -> None:
        held: list[bytes] = []  # a writing transaction's answers, sent at its ReadyForQuery
        while True:
            kind, message = await _read_message(up)
            if kind == _COPY_IN:
                flow.copied = True
            elif kind == _ERROR:
                flow.failed = True
            if kind == _READY:
                flow.status = message[5:6]
                if flow.status != b"T":  # the transaction ended
                    committed = flow.copied and not flow.failed
                    flow.copied = flow.failed = False
                    if committed and self.cut_answers > 0:
                        self.cut_answers -= 1
                        self._cut()
            if flow.copied and kind != _COPY_IN and kind != _READY:
                held.append(message)
                continue
            for answer in (*held, message):
                writer.write(answer)
            held.clear()
            await writer.drain()


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One typed message: its type byte, and the whole message as read."""
    head = await reader.readexactly(5)
    (length,) = struct.unpack("!I", head[1:])
    return head[:1], head + await reader.readexactly(length - 4)


@contextlib.asynccontextmanager
async def commit_cutter(database_url: str):  # type: ignore[no-untyped-def]
    """A started :class:`CommitCutter` in front of ``database_url``'s server."""
    proxy = await CommitCutter.before(database_url).start()
    try:
        yield proxy
    finally:
        await proxy.stop()
