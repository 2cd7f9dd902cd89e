"""The parts of an ``AMQP_URL``: where a broker is, said the same way in every message.

:func:`check_amqp_url` is what settings run when ``AMQP_URL`` is read, so that a
malformed URL is one sentence naming the variable instead of a failure deep in
pika or kombu. :attr:`AmqpUrl.where` is how errors name a broker: host, port,
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
        :func:`check_amqp_url` for a strict check)."""
        parts = urlsplit(url)
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


def broker_at(url: str) -> str:
    """:attr:`AmqpUrl.where` of ``url``."""
    return AmqpUrl.parse(url).where


def check_amqp_url(url: str) -> None:
    """Raise ``ValueError`` saying what is wrong when ``url`` is not a usable AMQP URL.

    Checked: the scheme (``amqp``/``amqps``), a host, a numeric port. The message
    never contains the URL (the caller shows it with its password masked).
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
        hint = " (a / @ : or % in a password must be percent-encoded)" if "@" in url else ""
        raise ValueError(f"its port is not a number from 0 to 65535{hint}") from None
