"""The command line of a service process: ``python -m services.<name> [--help | --version]``.

A service is configured by its environment only; its ``--help`` lists the
variables it reads, generated from :class:`shared.settings.Settings` (name,
default, description), and exits 0 without connecting to anything. Any other
argument is a usage error (exit 2).
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence

from shared.cli.parser import CommandParser, package_version
from shared.settings import environment_help

HELP_WIDTH = 79


def service_parser(service: str, summary: str) -> argparse.ArgumentParser:
    """The parser of ``python -m services.<service>``; its help lists the environment."""
    parser = CommandParser(
        prog=f"python -m services.{service}",
        description=textwrap.fill(
            f"{summary} Runs until SIGTERM or SIGINT, then finishes the records in flight. "
            "Exit codes: 0 after a graceful stop, 78 when the configuration is unusable "
            "(one log line says why), 2 for a usage error.", HELP_WIDTH),
        epilog="environment (read once at start; lists are JSON, e.g. RETRY_DELAYS="
        "'[30,120]'):\n" + environment_help(service, HELP_WIDTH),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version",
                        version=f"bss-sync {service} {package_version()}")
    return parser


def parse_service_args(service: str, summary: str, argv: Sequence[str] | None = None) -> None:
    """Handle ``--help``/``--version`` (print, exit 0) and refuse anything else (exit 2)."""
    service_parser(service, summary).parse_args(argv)
