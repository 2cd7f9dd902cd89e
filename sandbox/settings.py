"""The sandbox BSS's settings: where its tables live, where it publishes, who may call it.

Read from the environment by :meth:`SandboxSettings.from_env` (``SANDBOX_*``
variables, falling back to the framework's ``DATABASE_URL`` / ``AMQP_URL``), or
built directly by tests and the CLI.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from sandbox.statistics import ANALYZE_AFTER
from shared.settings import DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL
from shared.storage.db import check_schema_name

DEFAULT_SCHEMA = "sandbox"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
#: Outbox rows the relay publishes per round (one SELECT, one confirm wave, one UPDATE).
DEFAULT_RELAY_BATCH = 500
#: Seconds between outbox polls when no NOTIFY arrives (a safety net).
DEFAULT_POLL_INTERVAL = 1.0
#: Ceiling of the relay's reconnection backoff, in seconds.
DEFAULT_BACKOFF_CAP = 30.0
#: Published outbox rows are deleted after this many seconds.
DEFAULT_OUTBOX_RETENTION = 24 * 3600.0

_TRUE = {"1", "true", "yes", "on"}


@dataclasses.dataclass(frozen=True, slots=True)
class SandboxSettings:
    """Everything the sandbox app needs; immutable, ``dataclasses.replace`` to vary."""

    database_url: str = DEFAULT_DATABASE_URL
    schema: str = DEFAULT_SCHEMA
    amqp_url: str = DEFAULT_AMQP_URL
    #: Run the outbox relay in the app process (off: API only, events stay in the outbox).
    relay_enabled: bool = True
    #: Bearer token required on every request but ``/health``; ``None``: open.
    token: str | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    pool_min: int = 2
    pool_max: int = 8
    relay_batch: int = DEFAULT_RELAY_BATCH
    poll_interval: float = DEFAULT_POLL_INTERVAL
    backoff_cap: float = DEFAULT_BACKOFF_CAP
    outbox_retention: float = DEFAULT_OUTBOX_RETENTION
    #: Writes after which the app analyzes ``records`` again, at the least (0: never;
    #: ``sandbox.statistics``).
    analyze_after: int = ANALYZE_AFTER
    #: Also declare the whole bss-sync topology at start (the relay always declares bss.events).
    declare_topology: bool = False
    #: Copy a write's ``X-Sync-Origin`` into its event's ``origin`` (off: events carry no
    #: origin, as from a BSS that does not support it — the loop guard by hash is tested so).
    copy_origin: bool = True

    def __post_init__(self) -> None:
        check_schema_name(self.schema)
        if self.analyze_after < 0:
            raise ValueError("analyze_after must not be negative (0: never)")
        if self.relay_batch < 1:
            raise ValueError("relay_batch must be at least 1")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> (
            SandboxSettings):
        """Settings from ``SANDBOX_<FIELD>`` variables (``SANDBOX_SCHEMA``, ``SANDBOX_TOKEN``…),
        the database and broker falling back to ``DATABASE_URL`` / ``AMQP_URL``; then
        ``overrides`` (``None`` values ignored).

        Raises ``ValueError`` for a malformed value (schema name, number).
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {
            "database_url": env.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
            "amqp_url": env.get("AMQP_URL") or DEFAULT_AMQP_URL,
        }
        for field in dataclasses.fields(cls):
            raw = env.get(f"SANDBOX_{field.name.upper()}")
            if raw:
                values[field.name] = _parse(raw, field.type)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """``SANDBOX_*`` variables that :meth:`from_env` reads back as these settings."""
        env = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None:
                env[f"SANDBOX_{field.name.upper()}"] = str(value).lower() \
                    if isinstance(value, bool) else str(value)
        return env


def _parse(raw: str, kind: object) -> object:
    """A variable's text as the field's type (``bool``, ``int``, ``float`` or text)."""
    name = kind if isinstance(kind, str) else getattr(kind, "__name__", "str")
    if name == "bool":
        return raw.strip().lower() in _TRUE
    if name == "int":
        return int(raw)
    if name == "float":
        return float(raw)
    return raw
