"""``bss-sync``: one console script, one module per group of subcommands.

Each command module exposes ``register(subparsers)`` and sets ``func`` on its
parsers; ``func(args) -> int`` is the exit code. A person never sees a traceback:
errors they can act on are one sentence; anything unexpected is reported as a
bug in one line (with ``--debug`` for the traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shared.cli import connector_cmds, runtime_cmds, storage_cmds

COMMAND_MODULES = (connector_cmds, storage_cmds, runtime_cmds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bss-sync",
        description="Keep a BSS in sync with third-party REST systems.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the last line of defence: never a traceback for a person
        if args.debug:
            raise
        from shared.logging import redact

        print(f"bss-sync: internal error: {type(exc).__name__}: {redact(str(exc))} "
              "(run with --debug for details)", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
