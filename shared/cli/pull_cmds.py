"""``bss-sync pull``: a manual pull discovery of one instance.

The discovery itself is the dispatcher's (``services.dispatcher.pull``). With
``--wait`` it runs here and a summary is printed, one line per object, then a total;
without, it starts as a detached process (``python -m services.dispatcher.pull``) and
the run id is printed, to follow with ``bss-sync audit search --run ID``. Exit 1 when
the discovery cannot start or an object failed (its error is on the object's line).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import uuid

from shared.cli.parser import Subparsers, add_command
from shared.errors import ConfigurationError, InfrastructureError
from shared.logging import logging_to, redact
from shared.schemas import ENTITIES
from shared.settings import get_settings


def register(sub: Subparsers) -> None:
    """Add ``pull``."""
    pull = add_command(
        sub, "pull", "list what changed on an instance's third party and publish it to the puller",
        "List the records changed on the instance's third party since its pull cursors "
        "(every object with pull.list whose entity the instance may pull) and publish one "
        "pull message per record on sync.pull for the puller. A cursor advances only "
        "once the broker confirmed every message of its page; a discovery stopped mid-way "
        "resumes where it stopped. With --wait, runs here and prints a summary; without, "
        "starts in the background and prints the run id.")
    add_run_options(pull, does="pulls", full="ignore the cursors: list every record",
                    wait="run in the foreground and print a summary")
    pull.set_defaults(func=cmd_pull)


def add_run_options(parser: argparse.ArgumentParser, *, does: str, full: str,
                    wait: str) -> None:
    """``--instance``, ``--entity``, ``--full`` and ``--wait``: what ``pull`` and ``sync``
    both take (``does``: what the instance does with the entities it takes)."""
    parser.add_argument("--instance", required=True, metavar="ID",
                        help="the instance (see `bss-sync instances list`)")
    parser.add_argument("--entity", choices=ENTITIES, metavar="ENTITY",
                        help=f"only this entity, one of {', '.join(ENTITIES)} (default: "
                             f"every entity the instance {does})")
    parser.add_argument("--full", action="store_true", help=f"{full} (default: off)")
    parser.add_argument("--wait", action="store_true", help=f"{wait} (default: off)")


def cmd_pull(args: argparse.Namespace) -> int:
    if not args.wait:
        return _start_detached(args)
    from services.dispatcher.pull import run_pull

    # stdout is the summary; what the discovery logs (warnings: a failed listing) goes to stderr
    try:
        with logging_to(sys.stderr, get_settings().log_level):
            report = asyncio.run(run_pull(args.instance, entity=args.entity, full=args.full))
    except (ConfigurationError, InfrastructureError) as exc:
        print(f"bss-sync: {redact(str(exc))}", file=sys.stderr)
        return 1
    for summary in report.objects:
        since = summary.since.isoformat() if summary.since else "the beginning"
        line = (f"{summary.object} ({summary.entity}): {summary.published} published of "
                f"{summary.records} listed, {summary.pages} pages, {summary.requests} "
                f"requests, since {since}")
        if summary.resumed_at_page:
            line += f", resumed at page {summary.resumed_at_page}"
        if summary.by_reference:
            line += f", {summary.by_reference} by external id only"
        if summary.without_id:
            line += f", {summary.without_id} without an external id"
        if summary.deleted_ids:
            line += f", {summary.deleted_ids} listed as deleted"
        line += f" — failed: {summary.error}" if summary.error else " — ok"
        print(line)
    counts = report.counts()
    print(f"run {report.run_id}: {counts['published']} messages published, "
          f"{counts['records']} records listed, {counts['failed_objects']} of "
          f"{counts['objects']} objects failed")
    return 0 if report.ok else 1


def _start_detached(args: argparse.Namespace) -> int:
    run_id, pid = start_detached("services.dispatcher.pull", args)
    print(f"discovery of {args.instance} started: run {run_id} (pid {pid}); "
          f"follow it with `bss-sync audit search --run {run_id}`")
    return 0


def start_detached(module: str, args: argparse.Namespace, *extra: str) -> tuple[str, int]:
    """``python -m MODULE --instance … --run-id … [--entity] [--full] EXTRA`` started in a
    session of its own (it outlives this command); the run id and the process id."""
    run_id = str(uuid.uuid4())
    command = [sys.executable, "-m", module, "--instance", args.instance, "--run-id", run_id,
               *extra]
    if args.entity:
        command += ["--entity", args.entity]
    if args.full:
        command.append("--full")
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True,
                               env=os.environ.copy())
    return run_id, process.pid
