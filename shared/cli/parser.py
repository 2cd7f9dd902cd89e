"""The argparse conventions every ``bss-sync`` command follows.

* A command has a one-line summary (the ``bss-sync --help`` list) and a
  description (its own ``--help``); :func:`add_command` sets both.
* An option's help says its default (``%(default)s``) when it has one.
* An unknown option is reported by the command that received it, with that
  command's usage, exit 2 (:class:`CommandParser`); argparse's own default
  reports it with the top-level usage, which does not help.
* A group (``db``, ``dead``…) run without its subcommand prints its help on
  stderr, exit 2 (:func:`add_group`).
* Listings print rows on stdout and nothing else; how many on stderr
  (:func:`report_count`), so an empty result leaves stdout empty.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn

DISTRIBUTION = "bss-sync"
#: The help of every ``--json`` flag.
JSON_LINES_HELP = ("print JSON Lines (one JSON object per {row}, one per line) "
                   "instead of {instead}")


def package_version() -> str:
    """The installed distribution's version (``pip install -e .`` counts)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (not installed: run `make install`)"


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that rejects unknown arguments itself.

    argparse lets a subcommand's parser collect what it does not know and has the
    top-level parser complain, with the top-level usage. Here the (sub)command that
    received the arguments complains, so the usage shown is the one that helps.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        """Usage and the error on stderr, exit 2 (argparse's, with a hint to --help)."""
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


Subparsers = argparse._SubParsersAction  # the type argparse returns from add_subparsers


def add_command(sub: Subparsers, name: str, summary: str, description: str | None = None,
                **kw: Any) -> CommandParser:
    """A subcommand with its one-line ``summary`` and its ``--help`` ``description``."""
    return sub.add_parser(name, help=summary, description=description or _sentence(summary),
                          **kw)


def add_group(sub: Subparsers, name: str, summary: str) -> Subparsers:
    """A command made of subcommands (``bss-sync db upgrade``): returns what to add them
    to. Run bare, it shows its help."""
    group = add_command(sub, name, summary)
    group.set_defaults(func=show_help(group))
    return group.add_subparsers(dest=f"{name}_command", metavar="COMMAND", title="commands")


def show_help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """A command function that prints ``parser``'s help on stderr and returns 2."""
    def show(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


def report_count(count: int, noun: str, plural: str | None = None, *,
                 limit: int | None = None, empty: str | None = None) -> None:
    """``3 rows`` on stderr (``empty`` instead when there are none); with ``limit``
    reached, says that more may exist."""
    if count == 0:
        print(empty or f"0 {plural or noun + 's'}", file=sys.stderr)
        return
    text = f"{count} {noun if count == 1 else plural or noun + 's'}"
    if limit is not None and count >= limit:
        text += " (the --limit; there may be more)"
    print(text, file=sys.stderr)


def _sentence(text: str) -> str:
    return (text[:1].upper() + text[1:]).rstrip(".") + "."
