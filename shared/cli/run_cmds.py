"""``bss-sync sync`` (a manual run) and ``bss-sync runs list|show`` (what runs did).

``sync --wait`` runs here (``services.dispatcher.run.run_now``) with a live display per
phase and entity, then a summary table; without ``--wait`` it starts the run as a
detached process (``python -m services.dispatcher.run``) and prints the run id. A run's
outcomes come from the audit log (final rows of the pusher and the puller carrying the
run's id), so ``runs show`` is as current as the log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from datetime import datetime
from typing import Any

from shared.cli.parser import JSON_LINES_HELP, Subparsers, add_command, add_group
from shared.cli.pull_cmds import add_run_options, start_detached
from shared.cli.storage_cmds import parse_when
from shared.errors import ConfigurationError, InfrastructureError
from shared.logging import logging_to, redact
from shared.settings import get_settings
from shared.storage.db import Database
from shared.storage.runs import Run, RunStore


def register(sub: Subparsers) -> None:
    """Add ``sync`` and ``runs``."""
    sync = add_command(
        sub, "sync", "run one instance now: push what the BSS changed, then pull",
        "A manual run of the instance, as the nightly run does it: the push phase queues "
        "every BSS record changed since the instance's push watermark and every record "
        "whose last push failed or died, waits until each is settled, then the pull "
        "phase discovers what changed on the third party. With --wait, runs here with a "
        "live display and prints a summary table; without, starts in the background and "
        "prints the run id (follow it with `bss-sync runs show RUN`).")
    add_run_options(sync, does="synchronizes",
                    full="ignore the watermark and cursors: every record",
                    wait="run in the foreground with a live display")
    sync.add_argument("--direction", choices=("push", "pull", "both"), default="both",
                      help="which phases (default: %(default)s)")
    sync.set_defaults(func=cmd_sync)

    runs = add_group(sub, "runs", "scheduled and manual runs")
    listing = add_command(runs, "list", "runs, newest first",
                          "Runs (scheduled and manual), newest first: when, instance, "
                          "trigger, status, phase, what was queued.")
    listing.add_argument("--instance", metavar="ID", help="instance id (default: any)")
    listing.add_argument("--org", metavar="ID", help="organization id (default: any)")
    listing.add_argument("--since", metavar="TIME",
                         help="started since: ISO date/time, or 30m, 1h, 2d, 1w ago "
                              "(default: no bound)")
    listing.add_argument("--limit", type=int, default=50, metavar="N",
                         help="runs at most (default: %(default)s)")
    listing.add_argument("--json", action="store_true",
                         help=JSON_LINES_HELP.format(row="run", instead="a table")
                         + " (default: off)")
    listing.set_defaults(func=cmd_runs_list)
    show = add_command(runs, "show", "one run: phases, durations, outcomes",
                       "One run: its phases with their durations, what it queued, how "
                       "many records came to each outcome per entity and direction, and "
                       "the audit search that lists its failures.")
    show.add_argument("run", metavar="RUN", help="the run id")
    show.add_argument("--json", action="store_true",
                      help=JSON_LINES_HELP.format(row="run, with its outcomes,",
                                                  instead="text") + " (default: off)")
    show.set_defaults(func=cmd_runs_show)


def cmd_sync(args: argparse.Namespace) -> int:
    if not args.wait:
        return _start_detached(args)
    from services.dispatcher.run import RunRefused, run_now
    from shared.cli.run_display import RunDisplay

    display = RunDisplay(args.instance)
    try:
        with logging_to(sys.stderr, get_settings().log_level), display:
            final, _progress = asyncio.run(run_now(
                args.instance, direction=args.direction, entity=args.entity, full=args.full,
                on_change=display.update, on_start=display.started))
    except (RunRefused, ConfigurationError, InfrastructureError) as exc:
        print(f"bss-sync: {redact(str(exc))}", file=sys.stderr)
        return 1
    outcomes = asyncio.run(_outcomes(final.id))
    display.summary(final, outcomes)
    return 0 if final.status == "completed" else 1


def _start_detached(args: argparse.Namespace) -> int:
    run_id, pid = start_detached("services.dispatcher.run", args, "--direction",
                                 args.direction)
    print(f"run {run_id} of {args.instance} started (pid {pid}); follow it with "
          f"`bss-sync runs show {run_id}`")
    return 0


def cmd_runs_list(args: argparse.Namespace) -> int:
    try:
        since = parse_when(args.since) if args.since else None
    except ValueError as exc:
        print(f"bss-sync: --since: {exc}", file=sys.stderr)
        return 2
    try:
        found = asyncio.run(_list(args.instance, args.org, since, args.limit))
    except InfrastructureError as exc:
        print(f"bss-sync: {redact(str(exc))}", file=sys.stderr)
        return 1
    if args.json:
        for run in found:
            print(json.dumps(_run_json(run)))
    else:
        print(f"{'started':<25} {'instance':<16} {'trigger':<9} {'status':<10} {'phase':<5} "
              f"{'queued':>7} {'pulled':>7}  run")
        for run in found:
            print(f"{_when(run.started_at):<25} {run.instance_id:<16} {run.trigger:<9} "
                  f"{run.status:<10} {run.phase:<5} {run.counts.get('push.queued', 0):>7} "
                  f"{run.counts.get('pull.published', 0):>7}  {run.id}")
    print(f"{len(found)} run{'s' if len(found) != 1 else ''}", file=sys.stderr)
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    try:
        found = asyncio.run(_show(args.run))
    except InfrastructureError as exc:
        print(f"bss-sync: {redact(str(exc))}", file=sys.stderr)
        return 1
    if found is None:
        print(f"bss-sync: no run {args.run!r} (see `bss-sync runs list`)", file=sys.stderr)
        return 1
    run, outcomes = found
    if args.json:
        print(json.dumps({**_run_json(run), "outcomes": [
            {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
            for row in outcomes]}))
        return 0
    print("\n".join(describe_run(run, outcomes)))
    return 0


def describe_run(run: Run, outcomes: list[dict[str, Any]]) -> list[str]:
    """The text of ``runs show`` (pure)."""
    lines = [f"run        {run.id}",
             f"instance   {run.instance_id} (organization {run.org_id})",
             f"trigger    {run.trigger}"
             + (f", slot {run.scheduled_for.isoformat()}" if run.scheduled_for else ""),
             f"status     {run.status}" + (f" (phase {run.phase})"
                                           if run.status == "running" else "")]
    push_end = run.push_settled_at or run.finished_at
    lines.append(f"push       {_span(run.started_at, push_end)}; "
                 f"{run.counts.get('push.queued', 0)} queued "
                 f"({run.counts.get('push.retried', 0)} earlier failures)")
    if run.push_settled_at is not None:
        lines.append(f"pull       {_span(run.push_settled_at, run.finished_at)}; "
                     f"{run.counts.get('pull.published', 0)} published of "
                     f"{run.counts.get('pull.records', 0)} listed")
    if run.error:
        lines.append(f"error      {run.error}")
    if outcomes:
        lines.append("")
        lines.append(f"{'direction':<10} {'entity':<14} {'outcome':<10} {'records':>8}")
        for row in outcomes:
            lines.append(f"{row['direction'] or '-':<10} {row['entity'] or '-':<14} "
                         f"{row['outcome']:<10} {row['records']:>8}")
    failed = sum(r["records"] for r in outcomes if r["outcome"] in ("failed", "dead"))
    if failed:
        lines.append("")
        lines.append(f"{failed} failed: bss-sync audit search --run {run.id} "
                     "--outcome failed,dead")
    return lines


def _span(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return "not started"
    if end is None:
        return f"since {_when(start)}"
    return f"{_when(start)} → {_when(end)} ({(end - start).total_seconds():.1f} s)"


def _when(value: datetime) -> str:
    return value.isoformat(timespec="seconds")


def _run_json(run: Run) -> dict[str, Any]:
    return {"id": str(run.id), "org_id": run.org_id, "instance_id": run.instance_id,
            "trigger": run.trigger, "status": run.status, "phase": run.phase,
            "scheduled_for": run.scheduled_for.isoformat() if run.scheduled_for else None,
            "started_at": run.started_at.isoformat(),
            "push_settled_at": run.push_settled_at.isoformat() if run.push_settled_at else None,
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            "counts": run.counts, "error": run.error}


async def _list(instance: str | None, org: str | None, since: datetime | None,
                limit: int) -> list[Run]:
    async with Database.from_settings(get_settings(), min_size=1, max_size=2) as db:
        return await RunStore(db).list(instance, org_id=org, since=since, limit=limit)


async def _show(run_id: str) -> tuple[Run, list[dict[str, Any]]] | None:
    async with Database.from_settings(get_settings(), min_size=1, max_size=2) as db:
        runs = RunStore(db)
        run = await runs.get(run_id)
        if run is None:
            return None
        return run, await runs.outcomes(run.id)


async def _outcomes(run_id: uuid.UUID) -> list[dict[str, Any]]:
    async with Database.from_settings(get_settings(), min_size=1, max_size=2) as db:
        return await RunStore(db).outcomes(run_id)
