"""Infrastructure settings, read from the environment (docs/architecture.md §7).

Organizations, connectors and instances are data in PostgreSQL; only what a
process needs to reach its infrastructure lives here. The fields of
:class:`Settings` are the one list of environment variables: their names,
defaults and descriptions are what ``python -m services.<name> --help`` prints
(:func:`environment_help`).

Values are checked when they are read: :func:`get_settings` raises
:class:`SettingsInvalid`, one line naming the variable (``DATABASE_URL is not a
PostgreSQL URL: postgresql://app:***@[db/app (…)``), never echoing a password.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator
from functools import lru_cache
from pathlib import PurePath
from typing import Any, Literal

from pydantic import Field, ValidationError, create_model, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from shared.errors import ConfigurationError

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
#: Where ``file:`` credential references must point (shared.credentials): where Docker and
#: Compose mount secrets.
DEFAULT_CREDENTIALS_DIR = "/run/secrets"
#: The retry ladder (seconds): one retry queue per rung (shared.messaging.topology); the
#: one default of the project, imported wherever a default ladder is meant.
DEFAULT_RETRY_DELAYS: tuple[float, ...] = (30.0, 120.0, 600.0, 3600.0)


#: ``json_schema_extra`` key of a field read by some services only (absent: every service).
SERVICES_KEY = "services"


class SettingsInvalid(ConfigurationError):
    """An environment variable holds a value the process cannot use (one line naming it)."""


class _NamedProblem(ValueError):
    """A validator's complete sentence, naming the variable itself (shown as it is)."""


class Settings(BaseSettings):
    """Environment variables, unprefixed names as operators expect them."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    amqp_url: str = Field(DEFAULT_AMQP_URL, description=(
        "RabbitMQ URL, vhost included; the nodes of a cluster as URLs separated by commas"))
    database_url: str = Field(DEFAULT_DATABASE_URL, description="PostgreSQL URL")
    db_schema: str = Field("public", description="PostgreSQL schema holding bss-sync's tables")
    db_pool_size: int = Field(
        24, ge=1, description="pooled PostgreSQL connections per process (handlers share them)")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: str = Field("auto", description="json, console, or auto (console on a tty)")
    concurrency: int = Field(64, ge=1, description="handlers in flight per consumer process")
    prefetch: int | None = Field(
        None, ge=1, description="messages RabbitMQ sends ahead to each consumer; unset: "
                                "4 x CONCURRENCY")
    retry_delays: tuple[float, ...] = Field(
        DEFAULT_RETRY_DELAYS, description="backoff ladder in seconds, a JSON list: one retry "
                                          "queue per rung"
    )
    delivery_limit: int = Field(
        20, ge=1, description="quorum-queue redeliveries before the safety-net dead letter"
    )
    shutdown_timeout: float = Field(30.0, description="seconds to finish in-flight work on SIGTERM")
    audit_batch_size: int = Field(
        128, ge=1, description="audit rows written in one statement at most (half the "
        "prefetch window: one batch commits while the rest is handled)")
    audit_batch_interval: float = Field(0.02, description="seconds a batch waits for company")
    bss_api_url: str = Field("http://127.0.0.1:8080", description="the host BSS API",
                             json_schema_extra={SERVICES_KEY: ["pusher", "puller"]})
    bss_api_token: str | None = Field(
        None, description="reference (env:NAME or file:PATH) to the BSS API's bearer "
                          "token; unset: no token is sent",
        json_schema_extra={SERVICES_KEY: ["pusher", "puller"]})
    credentials_dir: str = Field(
        DEFAULT_CREDENTIALS_DIR, description="the directory file: credential references "
                                             "must name a file in (relative to it, or "
                                             "absolute inside it); bss-sync apply checks "
                                             "them against it too",
        json_schema_extra={SERVICES_KEY: ["pusher", "puller"]})
    gc_threshold: int = Field(
        50_000, ge=0, description="allocations between the garbage collector's young-"
                                  "generation passes (0: Python's default, 700)")
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="the services' event loop: uvloop (faster sockets) or asyncio")
    bss_api_batch_reads: bool = Field(
        True, description="read records for concurrent pushes in one listing by ids "
                          "(?id=a&id=b); a BSS without that filter is detected and read "
                          "one record at a time", json_schema_extra={SERVICES_KEY: ["pusher"]})
    redelivery_max_age_days: float | None = Field(
        None, gt=0, description="the daily redelivery parks dead letters that first failed "
                                "more days ago than this in <service>.parked instead of "
                                "moving them back; unset: every one goes back",
        json_schema_extra={SERVICES_KEY: ["dispatcher"]})
    redelivery_schedule: str = Field(
        "30 22 * * *", description="cron expression of the daily redelivery of dead letters "
                                   "(in the installation's time zone); before the nightly run",
        json_schema_extra={SERVICES_KEY: ["dispatcher"]})
    schedules_enabled: bool = Field(
        True, description="run the schedules (instances' runs, the daily redelivery); off: "
                          "this dispatcher only fans events out",
        json_schema_extra={SERVICES_KEY: ["dispatcher"]})
    schedule_interval: float = Field(
        30.0, gt=0, description="seconds between two looks at the schedules (a changed "
                                "schedule is seen this late)",
        json_schema_extra={SERVICES_KEY: ["dispatcher"]})
    run_push_timeout: float = Field(
        3600.0, gt=0, description="seconds a run waits for its push messages to settle "
                                  "before it pulls anyway (audited)",
        json_schema_extra={SERVICES_KEY: ["dispatcher"]})
    clock_file: str | None = Field(
        None, description="tests only: the scheduler reads the current time (ISO 8601) "
                          "from this file instead of the system clock",
        json_schema_extra={SERVICES_KEY: ["dispatcher"]})
    management_url: str | None = Field(
        None, description="RabbitMQ management API, for tooling and tests; defaults to "
                          "http://<amqp host>:15672", json_schema_extra={SERVICES_KEY: []}
    )
    # The hand-written fast paths, each with the library it stands in for
    # (docs/decisions.md, "Fast paths"). Read when a client, a check or an expression is
    # built — once per process — never per message.
    http_transport: Literal["fast", "httpx"] = Field(
        "fast", description="the BSS and third-party clients' HTTP transport: fast (our "
                            "HTTP/1.1 transport) or httpx (httpx's default transport)",
        json_schema_extra={SERVICES_KEY: ["pusher", "puller"]})
    schema_checks: Literal["fast", "jsonschema"] = Field(
        "fast", description="envelopes and BSS events: fast (a hand-written check of the "
                            "schema, jsonschema words what it refuses) or jsonschema alone")
    transform_paths: Literal["fast", "jsonata"] = Field(
        "fast", description="field paths in mappings (a.b, addresses[isBilling][0].city) "
                            "and what is built of them (conditions, constructors, helper "
                            "calls): fast (in Python) or jsonata (jsonata-python for every "
                            "expression)", json_schema_extra={SERVICES_KEY: ["pusher", "puller"]})

    @field_validator("amqp_url")
    @classmethod
    def _check_amqp_url(cls, url: str) -> str:
        from shared.messaging.amqp_url import check_amqp_url

        try:
            check_amqp_url(url)
        except ValueError as exc:
            raise _NamedProblem(f"AMQP_URL is not a RabbitMQ URL: {masked_url(url)}: {exc}"
                                ) from None
        return url

    @field_validator("credentials_dir")
    @classmethod
    def _check_credentials_dir(cls, path: str) -> str:
        if not PurePath(path).is_absolute():
            raise _NamedProblem(f"CREDENTIALS_DIR must be an absolute path, not {path!r}")
        return path

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, url: str) -> str:
        from shared.storage.db import check_database_url

        try:
            check_database_url(url)
        except ValueError as exc:
            raise _NamedProblem(f"DATABASE_URL is not a PostgreSQL URL: {masked_url(url)}: {exc}"
                                ) from None
        return url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once.

    Raises :class:`SettingsInvalid` (one line naming the variable) when a value is
    unusable; nothing is cached then.
    """
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsInvalid("; ".join(_problems(exc))) from None
    except SettingsError as exc:  # a list-valued variable that is not JSON
        match = re.search(r'field "(\w+)"', str(exc))
        field = Settings.model_fields.get(match.group(1)) if match else None
        if match is None or field is None:
            raise SettingsInvalid(f"the environment is invalid: {exc}") from None
        raise SettingsInvalid(f"{match.group(1).upper()} is invalid: it must be JSON, like "
                              f"{_shown_default(field.default)}") from None


def get_setting(name: str) -> Any:
    """One setting (a :class:`Settings` field name), read and checked alone.

    For code that needs one switch and nothing else (compiling a mapping in
    ``bss-sync validate``, choosing a transport): a malformed ``DATABASE_URL`` must
    not stop a command that never connects. The whole settings are used when they
    are valid, so a process sees one value. Raises :class:`SettingsInvalid` when this
    variable itself is unusable.
    """
    try:
        return getattr(get_settings(), name)
    except SettingsInvalid:
        pass
    field = Settings.model_fields[name]
    only = create_model(f"Only{name.title()}", __base__=BaseSettings,
                        __config__=None, **{name: (field.annotation, field)})
    only.model_config = Settings.model_config
    try:
        return getattr(only(), name)
    except ValidationError as exc:
        raise SettingsInvalid("; ".join(_problems(exc))) from None


def _problems(exc: ValidationError) -> Iterator[str]:
    """One sentence per invalid variable; values shown only with passwords masked."""
    from shared.logging import redact

    for error in exc.errors(include_url=False):
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, _NamedProblem):
            yield str(cause)
            continue
        name = ".".join(str(part) for part in error["loc"]).upper()
        got = redact(masked_url(str(error.get("input", ""))))[:80]
        message = str(error["msg"])
        yield f"{name} is invalid: {message[:1].lower()}{message[1:]} (got {got!r})"


def masked_url(url: str) -> str:
    """``url`` with the password of its user info masked, even when the URL is malformed.

    Everything between ``user:`` and the last ``@`` before the query is masked (a
    password holding ``/`` or ``@`` unencoded defeats a stricter parse); without
    ``://``, all that comes before an ``@``. A ``password=`` parameter is masked too.
    """
    scheme, sep, rest = url.partition("://")
    before_query, q, query = (rest if sep else url).partition("?")
    userinfo, at, host = before_query.rpartition("@")
    if at and not sep:
        before_query = f"***@{host}"
    elif at and ":" in userinfo:
        before_query = f"{userinfo.split(':', 1)[0]}:***@{host}"
    masked = f"{scheme}{sep}{before_query}{q}{query}" if sep else f"{before_query}{q}{query}"
    return re.sub(r"(?i)(password=)[^&\s]+", r"\1***", masked)


def environment_help(service: str, width: int = 79) -> str:
    """The environment variables ``service`` reads, with their defaults and descriptions.

    Generated from :class:`Settings`' fields, so the list cannot drift from what is
    read. Used by ``python -m services.<name> --help``.
    """
    lines = []
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        services = extra.get(SERVICES_KEY)
        if services is not None and service not in services:  # type: ignore[operator]
            continue
        lines.append(f"  {name.upper()}  (default: {_shown_default(field.default)})")
        lines += textwrap.wrap(field.description or "", width, initial_indent="      ",
                               subsequent_indent="      ")
    return "\n".join(lines)


def _shown_default(value: Any) -> str:
    """A default as it would be written in the environment (JSON for lists and booleans)."""
    if value is None:
        return "unset"
    if isinstance(value, bool | tuple | list):
        return json.dumps([_plain(v) for v in value] if isinstance(value, tuple | list)
                          else value)
    return str(_plain(value))


def _plain(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value
