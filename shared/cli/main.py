"""``bss-sync``: one console script, one module per group of subcommands.

Each command module exposes ``register(subparsers)`` and sets ``func`` on its
parsers; ``func(args) -> int`` is the exit code. The conventions every command
follows (summaries, defaults in help, usage errors, stdout for data and stderr for
counts) are in :mod:`shared.cli.parser`.

A person never sees a traceback: errors they can act on are one sentence; an
unusable environment variable is one line naming it (exit 78, ``EX_CONFIG``, as
the services); anything unexpected is reported as a bug in one line (exit 70,
with ``--debug`` for the traceback). Usage errors exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shared.cli import (
    connector_cmds,
    dlq_cmds,
    pull_cmds,
    run_cmds,
    runtime_cmds,
    storage_cmds,
)
from shared.cli.parser import CommandParser, package_version
from shared.settings import SettingsInvalid

COMMAND_MODULES = (connector_cmds, storage_cmds, runtime_cmds, dlq_cmds, pull_cmds, run_cmds)
EXIT_CONFIG = 78


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="bss-sync",
        description="Keep a BSS in sync with third-party REST systems. `bss-sync COMMAND "
        "--help` says what a command does. RabbitMQ and PostgreSQL come from the "
        "environment (AMQP_URL, DATABASE_URL, …: `python -m services.pusher --help` "
        "lists every variable with its default).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}",
                        help="print the installed version and exit")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks of unexpected errors (default: off)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except SettingsInvalid as exc:
        print(f"bss-sync: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the last line of defence: never a traceback for a person
        if type(exc).__name__ == "UndefinedTable" and not args.debug:  # psycopg's, any command
            print("bss-sync: the database has no bss-sync tables yet; run "
                  "`bss-sync db upgrade`", file=sys.stderr)
            return 1
        if args.debug:
            raise
        from shared.logging import redact

        print(f"bss-sync: internal error: {type(exc).__name__}: {redact(str(exc))} "
              "(run with --debug for details)", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
