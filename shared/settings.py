"""Infrastructure settings, read from the environment (docs/architecture.md §7).

Organizations, connectors and instances are data in PostgreSQL; only what a
process needs to reach its infrastructure lives here.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_RETRY_DELAYS = (30.0, 120.0, 600.0, 3600.0)


class Settings(BaseSettings):
    """Environment variables, unprefixed names as operators expect them."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    amqp_url: str = Field(DEFAULT_AMQP_URL, description="RabbitMQ URL, vhost included")
    database_url: str = Field(DEFAULT_DATABASE_URL, description="PostgreSQL URL")
    db_schema: str = Field("public", description="PostgreSQL schema holding bss-sync's tables")
    db_pool_size: int = Field(
        24, ge=1, description="pooled PostgreSQL connections per process (handlers share them)")
    log_level: str = Field("INFO")
    log_format: str = Field("auto", description="json, console, or auto (console on a tty)")
    concurrency: int = Field(64, ge=1, description="handlers in flight per consumer process")
    prefetch: int | None = Field(None, ge=1, description="defaults to 4 x concurrency")
    retry_delays: tuple[float, ...] = Field(
        DEFAULT_RETRY_DELAYS, description="backoff ladder in seconds, e.g. [30,120,600,3600]"
    )
    delivery_limit: int = Field(
        20, ge=1, description="quorum-queue redeliveries before the safety-net dead letter"
    )
    shutdown_timeout: float = Field(30.0, description="seconds to finish in-flight work on SIGTERM")
    audit_batch_size: int = Field(500, ge=1)
    audit_batch_interval: float = Field(0.02, description="seconds a batch waits for company")
    bss_api_url: str = Field("http://127.0.0.1:8080", description="the host BSS API")
    bss_api_token: str | None = Field(
        None, description="reference (env:NAME or file:PATH) to the BSS API's bearer token")
    gc_threshold: int = Field(
        50_000, ge=0, description="allocations between the garbage collector's young-"
                                  "generation passes (0: Python's default, 700)")
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="the services' event loop: uvloop (faster sockets) or asyncio")
    bss_api_batch_reads: bool = Field(
        True, description="read records for concurrent pushes in one listing by ids "
                          "(?id=a&id=b); a BSS without that filter is detected and read "
                          "one record at a time")
    management_url: str | None = Field(
        None, description="RabbitMQ management API; defaults to http://<amqp host>:15672"
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
