"""Value objects configuring a third-party client (pure, no I/O).

``InstanceEndpoint`` is what the client needs to know about an instance; ``Timeouts``
and ``RateLimit`` come from the connector's ``x-synchronization`` block (the instance
may override the rate limit); ``ClientOptions`` holds the framework's own limits.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from shared import __version__
from shared.errors import ConfigurationError

USER_AGENT = f"bss-sync/{__version__}"
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 30.0
#: In-flight requests per instance when the connector declares no ``concurrency``:
#: polite to a third party that said nothing, while a consumer keeps 64 records in flight.
DEFAULT_CONCURRENCY = 10
DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024
DEFAULT_INLINE_RETRY_MAX = 5.0
DEFAULT_MAX_REDIRECTS = 5
#: The longest a ``Retry-After`` pauses an instance in this process (a junk value like
#: a year must not freeze it; the record itself is retried per ``RateLimited.retry_after``).
DEFAULT_MAX_PAUSE = 3600.0
#: Refresh an OAuth2 token this long before it expires (at most half its lifetime).
DEFAULT_REFRESH_MARGIN = 60.0

_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in ``"500ms"``, ``"1s"``, ``"1.5m"``, ``"1h"``. Raises ``ConfigurationError``."""
    match = _DURATION.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise ConfigurationError(f"duration {text!r} must look like 500ms, 1s, 10s, 1m or 1h")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@dataclasses.dataclass(frozen=True)
class InstanceEndpoint:
    """An instance as the HTTP client sees it.

    ``credentials`` maps a credential name (``apiKey``, ``username``, ``clientId``…)
    to a *reference* (``env:NAME`` / ``file:PATH``), never to a secret. ``settings``
    may hold ``securityScheme`` (which scheme to use when the operation accepts
    several), ``tokenUrl``, ``tokenAuth`` (``basic`` | ``body``), ``scope`` and
    ``rateLimit`` (overriding the connector's, key by key).
    """

    id: str
    server_url: str | None = None
    variables: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    credentials: Mapping[str, str] = dataclasses.field(default_factory=dict)
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, instance: Any) -> InstanceEndpoint:
        """From any object with ``id``, ``server_url``, ``variables``, ``credentials`` and
        ``settings`` attributes (``shared.storage.instances.Instance``)."""
        return cls(
            id=instance.id,
            server_url=instance.server_url,
            variables=dict(instance.variables or {}),
            credentials=dict(instance.credentials or {}),
            settings=dict(instance.settings or {}),
        )

    def setting(self, name: str, default: Any = None) -> Any:
        return self.settings.get(name, default)


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """Connect and read timeouts in seconds (the read one also bounds writes)."""

    connect: float = DEFAULT_CONNECT_TIMEOUT
    read: float = DEFAULT_READ_TIMEOUT

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any],
                      override: Mapping[str, Any] | None = None) -> Timeouts:
        """From a connector's settings (``timeouts: {connect, read}``), the instance's
        ``override`` winning key by key; defaults elsewhere."""
        raw = {**(settings.get("timeouts") or {}), **(override or {})}
        return cls(
            connect=float(raw.get("connect") or DEFAULT_CONNECT_TIMEOUT),
            read=float(raw.get("read") or DEFAULT_READ_TIMEOUT),
        )


@dataclasses.dataclass(frozen=True)
class RateLimit:
    """At most ``requests`` per ``per`` seconds (``None``: unlimited), and at most
    ``concurrency`` requests in flight, for one instance in one process."""

    requests: int | None = None
    per: float = 1.0
    concurrency: int = DEFAULT_CONCURRENCY

    @classmethod
    def from_settings(
        cls, connector: Mapping[str, Any], override: Mapping[str, Any] | None = None
    ) -> RateLimit:
        """The connector's ``rateLimit`` with the instance's override applied key by key.

        Raises ``ConfigurationError`` on a malformed duration or a non-positive number.
        """
        merged = {**(connector.get("rateLimit") or {}), **(override or {})}
        requests = merged.get("requests")
        concurrency = merged.get("concurrency")
        concurrency = DEFAULT_CONCURRENCY if concurrency is None else concurrency
        if (requests is not None and int(requests) < 1) or int(concurrency) < 1:
            raise ConfigurationError(
                "rateLimit.requests and rateLimit.concurrency must be at least 1"
            )
        return cls(
            requests=int(requests) if requests is not None else None,
            per=parse_duration(merged.get("per") or "1s"),
            concurrency=int(concurrency),
        )


@dataclasses.dataclass(frozen=True)
class ClientOptions:
    """The framework's own limits for every third-party client."""

    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    inline_retry_max: float = DEFAULT_INLINE_RETRY_MAX
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    max_pause: float = DEFAULT_MAX_PAUSE
    refresh_margin: float = DEFAULT_REFRESH_MARGIN
