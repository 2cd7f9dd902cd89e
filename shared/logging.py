"""structlog, configured once per process, and the redaction every output goes through.

Secrets never reach logs, audit rows, dead-letter headers or error messages:

* every credential value resolved at run time is registered with
  :func:`register_secret`, and :func:`redact` replaces it wherever it appears —
  whole, any piece of 8 characters or more, percent-encoded or in base64 (a
  basic-auth header echoed by a server): :mod:`shared.secret_mask`; a secret no
  longer in use (a superseded OAuth2 token) is dropped with :func:`forget_secret`;
* mapping keys that name credentials (``authorization``, ``password``,
  ``client_secret``, ``api_key``…) have their values masked by
  :func:`redact_mapping`, whatever the value.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any, TextIO

import structlog

from shared.message_context import MessageContext
from shared.secret_mask import MASK, SecretMask

_SENSITIVE_KEY = re.compile(
    r"(authorization|password|passwd|secret|token|api[-_]?key|apikey|cookie|credential"
    r"|private[-_]?app|hapikey|session|signature)",
    re.IGNORECASE,
)
#: user:password@ in URLs (AMQP_URL, DATABASE_URL, basic-auth URLs).
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@",
                           re.IGNORECASE)

#: The process's registered secrets; changed under the lock, read without it.
_mask = SecretMask()
_lock = threading.Lock()


def register_secret(value: str | None, *, identifier: bool = False) -> None:
    """Remember a credential so :func:`redact` masks it anywhere it appears, and every
    piece of 8 characters or more of it and of its base64.

    An ``identifier`` (a username, a client id) is masked only whole: its pieces are
    not secret and may be common words. Values under 4 characters are ignored.
    """
    if value:
        with _lock:
            _mask.add(value, identifier=identifier)


def forget_secret(value: str | None) -> None:
    """Stop masking a secret no longer in use (an OAuth2 token two refreshes old), so
    that the registered secrets do not grow for as long as the process runs."""
    if value:
        with _lock:
            _mask.discard(value)


def is_sensitive_key(key: str) -> bool:
    """Whether a header/field/parameter name designates a credential."""
    return bool(_SENSITIVE_KEY.search(key))


def redact(text: str) -> str:
    """``text`` with registered secrets (whole, in pieces, encoded) and URL passwords
    masked."""
    if not text:
        return text
    text = _mask.mask(text)
    if "://" in text:
        text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return text


def redact_value(value: Any) -> Any:
    """Deep-redact a JSON-like value: strings, and mappings by key and by value."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return redact_mapping(value)
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value


def redact_mapping(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with sensitive keys masked and every string redacted."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(key, str) and is_sensitive_key(key) and value not in (None, ""):
            out[key] = MASK
        else:
            out[key] = redact_value(value)
    return out


_message_context: ContextVar[MessageContext | None] = ContextVar("bss_sync_message",
                                                                 default=None)


def bind_message(context: MessageContext) -> None:
    """Bind the message being processed to every log line of this (asyncio) context.

    One ``ContextVar.set`` per message: binding through structlog's
    ``bind_contextvars`` (one variable per key) cost ~10 % of a no-op consumer. The
    fields (:meth:`MessageContext.log_fields`) are read only when a line is written.
    """
    _message_context.set(context)


def _merge_message(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    context = _message_context.get()
    if context is not None:
        for key, value in context.log_fields().items():
            event_dict.setdefault(key, value)
    return event_dict


def _redact_processor(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return redact_mapping(event_dict)


def configure_logging(level: str = "INFO", fmt: str = "auto", service: str | None = None,
                      stream: TextIO | None = None, *, cache: bool = True) -> None:
    """Configure structlog for this process: JSON lines, or console output on a tty, on
    ``stream`` (default: stdout; a command whose stdout is its result logs on stderr).
    ``cache=False`` keeps loggers from freezing this configuration on first use (a
    command that restores the previous one afterwards, :func:`logging_to`)."""
    stream = stream or sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _merge_message,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _redact_processor,
    ]
    if use_console:
        processors.append(structlog.dev.ConsoleRenderer())
    else:
        processors.append(structlog.processors.JSONRenderer())
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=cache,
    )
    if service:
        structlog.contextvars.bind_contextvars(service=service)
    # Quiet the chatty libraries; their failures reach us as exceptions we translate.
    for name in ("pika", "kombu", "amqp", "httpx", "httpcore", "psycopg"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def logging_to(stream: TextIO, level: str = "INFO") -> Iterator[None]:
    """Log to ``stream`` within the block, then restore the configuration found (a CLI
    command whose stdout is its result; the CLI also runs inside tests)."""
    configured = structlog.is_configured()
    saved = structlog.get_config()
    configure_logging(level, stream=stream, cache=False)
    try:
        yield
    finally:
        if configured:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()
