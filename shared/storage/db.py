"""The PostgreSQL edge: one connection pool per process, async everywhere.

Every connection is opened with ``search_path`` set to the configured schema and
``TimeZone=UTC``, so tests can isolate by schema or by database and timestamps
come back as aware UTC datetimes. Rows are dicts.

Failures of the database itself (``psycopg.OperationalError``,
``psycopg.InterfaceError``, ``psycopg_pool.PoolTimeout``, a closed pool) are
translated here to :class:`shared.errors.InfrastructureError`, with the URL's
password masked. Other psycopg errors (a constraint violation, a syntax error)
are bugs or data problems and propagate unchanged.
"""

from __future__ import annotations

import re
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from shared.errors import InfrastructureError
from shared.logging import redact

if TYPE_CHECKING:
    from shared.settings import Settings

DEFAULT_MIN_SIZE = 1
DEFAULT_MAX_SIZE = 10
DEFAULT_TIMEOUT = 10.0
#: A pooled connection unused for longer than this is checked before it is handed out.
IDLE_CHECK_AFTER = 5.0
POSTGRES_SCHEMES = ("postgresql", "postgres")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

Params = Sequence[Any] | dict[str, Any] | None
Connection = psycopg.AsyncConnection[dict[str, Any]]


def redact_url(url: str) -> str:
    """``url`` with its password masked (``postgresql://user:***@host/db``)."""
    masked = redact(url)
    return re.sub(r"(?i)(password=)\S+", r"\1***", masked)


def check_database_url(url: str) -> None:
    """Raise ``ValueError`` saying what is wrong when ``url`` is not a PostgreSQL URL.

    libpq itself parses it (so what passes here, psycopg accepts); only the URL form
    (``postgresql://user:password@host:port/database``) is allowed, not a
    ``key=value`` string. The message never contains the URL or a part of it (libpq
    quotes the offending part, which may be the password).
    """
    from psycopg.conninfo import conninfo_to_dict

    scheme, sep, _ = url.strip().partition("://")
    if not sep or scheme.lower() not in POSTGRES_SCHEMES:
        raise ValueError("it must start with postgresql:// "
                         "(postgresql://user:password@host:port/database)")
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "libpq refused it"
        reason = reason.split(': "', 1)[0].removesuffix(" in URI")
        raise ValueError(reason) from None
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            hint = " (a / @ : or % in a password must be percent-encoded)" if "@" in url else ""
            raise ValueError(f"its port is not a number from 1 to 65535{hint}")


def url_with_database(url: str, dbname: str) -> str:
    """The same PostgreSQL URL pointing at another database (query string kept)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def quote_ident(name: str) -> str:
    """A safely double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def check_schema_name(schema: str) -> str:
    """Return ``schema`` if it is a plain lower-case identifier; raise ``ValueError``."""
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"schema name {schema!r} must match {_SCHEMA_NAME.pattern}")
    return schema


class _DeadConnection(Exception):
    """A pooled connection was found dead while running a query."""

    def __init__(self, cause: psycopg.OperationalError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Database:
    """A pool of async connections to bss-sync's schema.

    Nothing connects at construction; ``await db.open()`` (or ``async with db``)
    does. Raises :class:`InfrastructureError` when PostgreSQL cannot be reached.
    """

    def __init__(
        self,
        url: str,
        schema: str = "public",
        *,
        min_size: int = DEFAULT_MIN_SIZE,
        max_size: int = DEFAULT_MAX_SIZE,
        timeout: float = DEFAULT_TIMEOUT,
        application_name: str = "bss-sync",
        synchronous_commit: bool = True,
    ) -> None:
        self.url = url
        self.schema = check_schema_name(schema)
        self.timeout = timeout
        self.synchronous_commit = synchronous_commit
        self._options = f"-c search_path={schema} -c TimeZone=UTC"
        if not synchronous_commit:
            # Commits return before their WAL is flushed. Only for writes whose
            # durability rides on a synchronous commit made after them (WAL is one
            # sequence: flushing a later commit flushes every earlier one).
            self._options += " -c synchronous_commit=off"
        self._app = application_name
        self._last_used: weakref.WeakKeyDictionary[Connection, float] = (
            weakref.WeakKeyDictionary())
        self._pool = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max(max_size, min_size),
            timeout=timeout,
            open=False,
            kwargs=self._connect_kwargs(),
            # A connection idle for a while (maybe broken by a server restart) is
            # checked before use; one used moments ago is not (a round trip per
            # checkout doubled the cost of every query).
            check=self._check_if_idle,
            name=f"bss-sync:{schema}" + ("" if synchronous_commit else ":async-commit"),
        )

    async def _check_if_idle(self, conn: Connection) -> None:
        last = self._last_used.get(conn)
        if last is None or time.monotonic() - last > IDLE_CHECK_AFTER:
            await AsyncConnectionPool.check_connection(conn)

    @classmethod
    def from_settings(cls, settings: Settings, **kw: Any) -> Database:
        """A database for ``settings.database_url``, ``settings.db_schema`` and
        ``settings.db_pool_size``."""
        kw.setdefault("max_size", settings.db_pool_size)
        return cls(settings.database_url, settings.db_schema, **kw)

    @property
    def safe_url(self) -> str:
        """The URL with its password masked, fit for messages and logs."""
        return redact_url(self.url)

    def _connect_kwargs(self) -> dict[str, Any]:
        return {
            "autocommit": True,
            "row_factory": dict_row,
            "options": self._options,
            "application_name": self._app,
            "connect_timeout": max(1, int(self.timeout)),
        }

    async def open(self) -> None:
        """Connect. Raises :class:`InfrastructureError` naming the (masked) URL."""
        await self.probe()
        with self._translated("open a connection pool to"):
            await self._pool.open(wait=True, timeout=self.timeout)

    async def probe(self) -> None:
        """Open and close one connection, so an unreachable server says why."""
        with self._translated("connect to"):
            conn = await psycopg.AsyncConnection.connect(self.url, **self._connect_kwargs())
            await conn.close()

    async def close(self) -> None:
        """Close every connection; idempotent."""
        await self._pool.close()

    async def __aenter__(self) -> Database:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @contextmanager
    def _translated(self, doing: str = "use") -> Iterator[None]:
        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, PoolClosed) as exc:
            self._last_used.clear()  # connections may be dead: check each before reuse
            reason = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
            raise InfrastructureError(
                f"cannot {doing} PostgreSQL at {self.safe_url}: {reason or type(exc).__name__}"
            ) from exc

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection in autocommit mode.

        Raises :class:`InfrastructureError` on connection failures, also those
        raised by the statements run inside the block.
        """
        with self._translated():
            async with self._pool.connection() as conn:
                try:
                    yield conn
                finally:
                    self._last_used[conn] = time.monotonic()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A pooled connection inside one transaction, committed when the block exits.

        An exception in the block rolls back and propagates (translated to
        :class:`InfrastructureError` when it is a connection failure).
        """
        with self._translated():
            async with self._pool.connection() as conn:
                try:
                    async with conn.transaction():
                        yield conn
                finally:
                    self._last_used[conn] = time.monotonic()

    async def execute(self, sql: str, params: Params = None) -> int:
        """Run one statement; return its row count. Raises :class:`InfrastructureError`."""
        async with self.connection() as conn:
            cur = await conn.execute(sql, params)
            return cur.rowcount

    async def fetch(self, sql: str, params: Params = None) -> list[dict[str, Any]]:
        """All rows of a query, as dicts. Raises :class:`InfrastructureError`.

        ``fetch``/``fetchrow`` serve reads and idempotent upserts: a query that fails
        because its pooled connection turns out dead (the server restarted, the
        backend was terminated) is run once more on a fresh connection.
        """
        return await self._query(sql, params, one=False)

    async def fetchrow(self, sql: str, params: Params = None) -> dict[str, Any] | None:
        """The first row of a query, or ``None``. Raises :class:`InfrastructureError`."""
        return await self._query(sql, params, one=True)

    async def _query(self, sql: str, params: Params, *, one: bool) -> Any:
        try:
            return await self._query_once(sql, params, one)
        except _DeadConnection:
            # Its siblings likely died too (a server restart): check each before reuse.
            self._last_used.clear()
        try:
            return await self._query_once(sql, params, one)
        except _DeadConnection as exc:
            with self._translated():
                raise exc.cause from None
            raise  # pragma: no cover

    async def _query_once(self, sql: str, params: Params, one: bool) -> Any:
        async with self.connection() as conn:
            try:
                cur = await conn.execute(sql, params)
                return await (cur.fetchone() if one else cur.fetchall())
            except psycopg.OperationalError as exc:
                # 08xxx: connection exception; 57P0x: the backend was terminated
                if conn.closed or (exc.sqlstate or "").startswith(("08", "57P0")):
                    raise _DeadConnection(exc) from exc
                raise

    async def fetchval(self, sql: str, params: Params = None) -> Any:
        """The first column of the first row, or ``None``."""
        row = await self.fetchrow(sql, params)
        return None if row is None else next(iter(row.values()))
