"""The parts of an ``AMQP_URL``: where a broker is, said the same way in every message.

``AMQP_URL`` names one broker, or the nodes of one RabbitMQ cluster as URLs separated
by commas (``amqp://u:p@rabbit-1/prod,amqp://u:p@rabbit-2/prod``; docs/architecture.md
§7): :func:`broker_urls` splits it, and whoever connects tries the nodes in turn.
:func:`check_amqp_url` is what settings run when ``AMQP_URL`` is read, so that a
malformed URL is one sentence naming the variable instead of a failure deep in
pika or kombu. :func:`broker_at` is how errors name a broker: host(s), port,
vhost and user, never the password (as PostgreSQL errors name host and database).
"""

from __future__ import annotations

import dataclasses
from urllib.parse import quote, unquote, urlsplit

SCHEMES = ("amqp", "amqps")
DEFAULT_PORT = 5672


@dataclasses.dataclass(frozen=True, slots=True)
class AmqpUrl:
    """The parts of an ``amqp://user:password@host:port/vhost`` URL."""

    host: str
    port: int
    user: str
    password: str
    vhost: str

    @classmethod
    def parse(cls, url: str) -> AmqpUrl:
        """The parts, with pika's defaults for what is left out (lenient: see
        :func:`check_amqp_url` for a strict check); of the first URL of a list."""
        parts = urlsplit(broker_urls(url)[0])
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            port = DEFAULT_PORT
        return cls(parts.hostname or "localhost", port,
                   unquote(parts.username or "guest"), unquote(parts.password or "guest"),
                   unquote(path) if path else "/")

    def with_vhost(self, vhost: str) -> str:
        """The URL of another vhost on the same broker."""
        return (f"amqp://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
                f"@{self.host}:{self.port}/{quote(vhost, safe='')}")

    @property
    def where(self) -> str:
        """``RabbitMQ at 127.0.0.1:5672 (vhost "/", user guest)``: for error messages."""
        return f'RabbitMQ at {self.host}:{self.port} (vhost "{self.vhost}", user {self.user})'


def broker_urls(value: str) -> list[str]:
    """The URLs of an ``AMQP_URL``: one, or the nodes of a cluster (comma-separated)."""
    urls = [url.strip() for url in value.split(",") if url.strip()]
    return urls or [value]


def with_vhost(value: str, vhost: str) -> str:
    """``value`` (one URL or a list) pointed at another vhost of the same broker(s)."""
    return ",".join(AmqpUrl.parse(url).with_vhost(vhost) for url in broker_urls(value))


def kombu_hostname(value: str) -> str:
    """What kombu's ``Connection`` takes for ``value``: its URLs separated by ``;``
    (kombu tries the next one when a connection fails)."""
    return ";".join(broker_urls(value))


def broker_at(value: str) -> str:
    """:attr:`AmqpUrl.where` of ``value``; of a cluster, every node's ``host:port``:
    ``RabbitMQ at r1:5672, r2:5672 (vhost "prod", user bss)``."""
    urls = broker_urls(value)
    first = AmqpUrl.parse(urls[0])
    if len(urls) == 1:
        return first.where
    nodes = ", ".join(f"{u.host}:{u.port}" for u in map(AmqpUrl.parse, urls))
    return f'RabbitMQ at {nodes} (vhost "{first.vhost}", user {first.user})'


def check_amqp_url(value: str) -> None:
    """Raise ``ValueError`` saying what is wrong when ``value`` is not a usable
    ``AMQP_URL``: each URL checked by :func:`check_one_url`, and every node of a list
    naming the same vhost (the vhost is the installation). The message never contains
    a URL (the caller shows it with its password masked).
    """
    urls = broker_urls(value)
    for n, url in enumerate(urls, 1):
        try:
            check_one_url(url)
        except ValueError as exc:
            raise ValueError(f"its URL number {n}: {exc}" if len(urls) > 1 else str(exc)) \
                from None
    vhosts = {AmqpUrl.parse(url).vhost for url in urls}
    if len(vhosts) > 1:
        raise ValueError("its URLs name different vhosts "
                         f"({', '.join(sorted(repr(v) for v in vhosts))}): the nodes of one "
                         "cluster serve one installation's vhost")


def check_one_url(url: str) -> None:
    """Raise ``ValueError`` saying what is wrong when ``url`` is not a usable AMQP URL.

    Checked: the scheme (``amqp``/``amqps``), a host, a numeric port.
    """
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in SCHEMES or "://" not in url:
        raise ValueError("it must start with amqp:// or amqps:// "
                         "(amqp://user:password@host:port/vhost)")
    if not parts.hostname:  # "amqp:///vhost": pika would quietly use localhost
        raise ValueError("it names no host (amqp://user:password@host:port/vhost)")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port when it is read
    except ValueError:
        hint = " (a / @ : , or % in a password must be percent-encoded)" if "@" in url else ""
        raise ValueError(f"its port is not a number from 0 to 65535{hint}") from None
