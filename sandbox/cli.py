"""``python -m sandbox serve | seed | migrate``: run the sandbox BSS, fill it with records.

Options default to the ``SANDBOX_*`` environment (see :mod:`sandbox.settings`);
the bearer token comes only from ``SANDBOX_TOKEN``, never from the command line.
Errors print one line and exit 1 (2 for bad usage).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import date

from sandbox.settings import SandboxSettings
from shared.errors import SyncError
from shared.logging import configure_logging, redact


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sandbox",
                                     description="The sandbox BSS (a reference BSS API).")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the BSS API and relay its events")
    _storage_options(serve)
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (default 8080)")
    serve.add_argument("--amqp-url", help="RabbitMQ URL, vhost included (default AMQP_URL)")
    serve.add_argument("--no-relay", action="store_true",
                       help="do not publish events (they wait in the outbox)")
    serve.add_argument("--declare-topology", action="store_true",
                       help="declare the whole bss-sync topology at start, not just bss.events")
    serve.add_argument("--pool-max", type=int, help="PostgreSQL connections per process")
    serve.add_argument("--workers", type=int, default=1,
                       help="server processes (one of them relays events; default 1)")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument("--log-level", default="info")

    seed = commands.add_parser("seed", help="create N realistic records per entity")
    _storage_options(seed)
    seed.add_argument("--org", required=True, help="organization id")
    seed.add_argument("--count", type=int, required=True, help="records per entity")
    seed.add_argument("--entities", help="comma-separated entities (default: all 8)")
    seed.add_argument("--seed", type=int, help="random seed: the same seed, the same records")
    seed.add_argument("--as-of", type=date.fromisoformat,
                      help="the 'today' the records' dates are relative to (YYYY-MM-DD)")

    migrate = commands.add_parser("migrate", help="create the sandbox's tables")
    _storage_options(migrate)
    return parser


def _storage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="PostgreSQL URL (default DATABASE_URL)")
    parser.add_argument("--schema", help="PostgreSQL schema of the sandbox (default sandbox)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the process's exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "seed":
            return asyncio.run(_seed(args))
        return asyncio.run(_migrate(args))
    except (SyncError, ValueError, OSError) as exc:
        print(f"sandbox {args.command}: {redact(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _settings(args: argparse.Namespace, **extra: object) -> SandboxSettings:

    return SandboxSettings.from_env(database_url=args.database_url, schema=args.schema, **extra)


def _serve(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from sandbox.app import create_app

    settings = _settings(args, host=args.host, port=args.port, amqp_url=args.amqp_url,
                         pool_max=args.pool_max,
                         relay_enabled=False if args.no_relay else None,
                         declare_topology=True if args.declare_topology else None)
    configure_logging(args.log_level, service="sandbox")
    options = {"host": settings.host, "port": settings.port, "log_level": args.log_level.lower(),
               "access_log": args.access_log, "server_header": False, "lifespan": "on"}
    if args.workers > 1:  # each worker builds its app from the environment
        os.environ.update(settings.to_env())
        uvicorn.run("sandbox.app:create_app", factory=True, workers=args.workers, **options)
    else:
        uvicorn.run(create_app(settings), **options)
    return 0


async def _seed(args: argparse.Namespace) -> int:
    from sandbox.migration import migrate
    from sandbox.seed import SeedError, seed_organization, summary
    from sandbox.store import InvalidRecord, RecordStore
    from shared.storage.db import Database

    if args.count < 1:
        raise ValueError("--count must be at least 1")
    settings = _settings(args)
    entities = [e.strip() for e in args.entities.split(",") if e.strip()] if args.entities \
        else None
    async with Database(settings.database_url, settings.schema) as db:
        await migrate(db, settings.schema)
        store = RecordStore(db)
        try:
            created = await seed_organization(
                store, args.org, args.count, seed=args.seed, today=args.as_of,
                progress=lambda entity, n: print(f"  {n} {entity}", flush=True),
                **({"entities": entities} if entities else {}))
        except SeedError as exc:
            raise ValueError(str(exc)) from exc
        except InvalidRecord as exc:
            details = "; ".join(f"{p.pointer}: {p.detail}" for p in exc.problems)
            raise ValueError(f"a generated record is invalid (a bug): {details}") from exc
    print(f"{summary(created)} for organization {args.org}; their events are in "
          f"{settings.schema}.outbox (published by a running sandbox)")
    return 0


async def _migrate(args: argparse.Namespace) -> int:
    from sandbox.migration import migrate
    from shared.storage.db import Database

    settings = _settings(args)
    async with Database(settings.database_url, settings.schema) as db:
        await migrate(db, settings.schema)
    print(f"schema {settings.schema} is up to date")
    return 0
