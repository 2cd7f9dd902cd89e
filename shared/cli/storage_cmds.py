"""``bss-sync db upgrade | apply FILE | orgs list | instances list/show | audit search``.

The database comes from ``DATABASE_URL`` and ``DB_SCHEMA``. What a person can act
on (an unreachable database, a database not upgraded yet, an invalid
installation file) is reported in plain lines on stderr with exit code 1.
Listings print their rows on stdout (a table, or JSON Lines with ``--json``) and
how many on stderr: an empty result leaves stdout empty.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from shared.audit.record import OUTCOMES
from shared.cli.parser import JSON_LINES_HELP, Subparsers, add_command, add_group, report_count
from shared.errors import ConfigurationError, InfrastructureError
from shared.logging import redact, redact_value
from shared.storage.db import Database

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
TABLE_CELL_WIDTH = 60


def register(sub: Subparsers) -> None:
    """Add ``db``, ``apply``, ``orgs``, ``instances`` and ``audit``."""
    db_sub = add_group(sub, "db", "database maintenance")
    add_command(db_sub, "upgrade", "apply pending migrations, create audit partitions ahead",
                "Apply the pending migrations to DATABASE_URL's DB_SCHEMA and create the "
                "audit log's monthly partitions ahead. Idempotent; safe to run from several "
                "places at once.").set_defaults(func=cmd_db_upgrade)

    apply = add_command(sub, "apply", "make the database match an installation file",
                        "Make the database match an installation file (organizations, "
                        "connectors, instances, permissions, schedules). Declarative: twice "
                        "is a no-op; what the file no longer names is deactivated. A file "
                        "with problems is refused as a whole (exit 1, every problem listed).")
    apply.add_argument("file", metavar="FILE", help="installation file (JSON or YAML)")
    apply.add_argument("--dry-run", action="store_true",
                       help="show the changes, write nothing (default: off)")
    apply.set_defaults(func=cmd_apply)

    orgs_sub = add_group(sub, "orgs", "organizations")
    orgs = add_command(orgs_sub, "list", "list organizations",
                       "List organizations as a table on stdout; how many on stderr.")
    _add_json(orgs, "organization")
    orgs.set_defaults(func=cmd_orgs_list)

    inst_sub = add_group(sub, "instances", "organizations' instances of connectors")
    listing = add_command(inst_sub, "list", "list instances",
                          "List instances as a table on stdout; how many on stderr.")
    listing.add_argument("--org", metavar="ID",
                         help="only this organization's (default: every organization's)")
    _add_json(listing, "instance")
    listing.set_defaults(func=cmd_instances_list)
    show = add_command(inst_sub, "show", "one instance: permissions, schedule, credentials "
                                         "(as references)")
    show.add_argument("id", metavar="ID", help="the instance id (see `bss-sync instances list`)")
    show.set_defaults(func=cmd_instances_show)

    audit_sub = add_group(sub, "audit", "the audit log")
    _add_search(add_command(
        audit_sub, "search", "search audit rows, newest first",
        "Search the audit log, newest first: a table on stdout (or JSON Lines with "
        "--json), how many rows on stderr. Flags combine with AND; unset ones match "
        "anything."))


def _add_search(parser: argparse.ArgumentParser) -> None:
    for flag, metavar, helptext in (
            ("--org", "ID", "organization id"), ("--instance", "ID", "instance id"),
            ("--entity", "NAME", "account, contact, …"), ("--record", "ID", "BSS record id"),
            ("--external-id", "ID", "third-party record id"), ("--run", "ID", "run id"),
            ("--message", "ID", "message id"), ("--service", "NAME", "pusher, puller, …"),
            ("--action", "NAME", "create, update, delete, …"),
            ("--error-class", "NAME", "RemoteRejected, SchemaViolation, …"),
            ("--correlation", "ID", "correlation id"),
            ("--text", "TEXT", "substring of error message, error class or details")):
        parser.add_argument(flag, metavar=metavar, help=f"{helptext} (default: any)")
    parser.add_argument("--direction", choices=("push", "pull"),
                        help="only this direction (default: both)")
    parser.add_argument("--http-status", type=int, metavar="STATUS",
                        help="remote HTTP status, e.g. 422 (default: any)")
    parser.add_argument("--attempt", type=int, metavar="N",
                        help="delivery attempt, 0 is the first (default: any)")
    parser.add_argument("--outcome", action="append", metavar="OUTCOME",
                        help=f"one of {', '.join(OUTCOMES)}; repeat or comma-separate "
                             "(default: any)")
    parser.add_argument("--since", metavar="TIME",
                        help="ISO date/time, or relative: 30m, 1h, 2d, 1w (default: no bound)")
    parser.add_argument("--until", metavar="TIME",
                        help="ISO date/time, or relative: 30m, 1h, 2d, 1w (default: no bound)")
    parser.add_argument("--limit", type=int, default=50, metavar="N",
                        help="rows at most (default: %(default)s)")
    _add_json(parser, "audit row")
    parser.set_defaults(func=cmd_audit_search)


def _add_json(parser: argparse.ArgumentParser, row: str) -> None:
    parser.add_argument("--json", action="store_true",
                        help=JSON_LINES_HELP.format(row=row, instead="a table")
                        + " (default: off)")


def _error(message: str) -> int:
    print(f"bss-sync: {redact(message)}", file=sys.stderr)
    return 1


def _with_database(work: Callable[[Database], Awaitable[int]]) -> int:
    """Open the configured database, run ``work``, and turn known failures into one line."""
    from shared.settings import get_settings

    settings = get_settings()  # an unusable DATABASE_URL is reported by main (exit 78)

    async def run() -> int:
        async with Database.from_settings(settings, min_size=1, max_size=4) as db:
            return await work(db)

    try:
        return asyncio.run(run())
    except InfrastructureError as exc:
        return _error(str(exc))
    except psycopg.errors.UndefinedTable:
        return _error("the database has no bss-sync tables yet; run `bss-sync db upgrade`")
    except ConfigurationError as exc:
        problems = getattr(exc, "problems", None)
        return _problems(problems, "nothing was applied") if problems else _error(str(exc))


def cmd_db_upgrade(_args: argparse.Namespace) -> int:
    from shared.storage.migrate import upgrade
    from shared.storage.partitions import existing_partitions

    async def work(db: Database) -> int:
        applied = await upgrade(db)
        print(f"applied migrations: {', '.join(applied)}" if applied
              else "database is up to date")
        partitions = sorted(p for p in await existing_partitions(db) if p[-1].isdigit())
        print(f"audit partitions: {', '.join(partitions)}")
        return 0

    return _with_database(work)


def cmd_apply(args: argparse.Namespace) -> int:
    from shared.installation import ApplyReport, InstallationInvalid, load_installation
    from shared.storage.config_sync import sync

    try:  # the file first: its problems do not need a database
        desired = load_installation(args.file)
    except InstallationInvalid as exc:
        return _problems(exc.problems, "nothing was applied")

    async def work(db: Database) -> int:
        changes = await sync(db, desired, dry_run=args.dry_run)
        report = ApplyReport(args.file, changes, args.dry_run)
        for line in report.lines():
            print(("would be " if report.dry_run and report.changed else "") + line)
        return 0

    return _with_database(work)


def _problems(problems: Sequence[Any], outcome: str) -> int:
    for problem in problems:
        print(redact(problem.format()), file=sys.stderr)
    count = len(problems)
    return _error(f"{count} problem{'s' if count != 1 else ''}; {outcome}")


def cmd_orgs_list(args: argparse.Namespace) -> int:
    from shared.storage.organizations import OrganizationStore

    async def work(db: Database) -> int:
        store = OrganizationStore(db)
        counts = await store.instance_counts()
        orgs = await store.list()
        if args.json:
            for o in orgs:
                active, total = counts.get(o.id, (0, 0))
                print_json({"id": o.id, "name": o.name, "timezone": o.timezone,
                            "active": o.active, "instances": total,
                            "active_instances": active})
        else:
            print_table(["ID", "NAME", "TIMEZONE", "ACTIVE", "INSTANCES (ACTIVE/ALL)"],
                        [[o.id, o.name, o.timezone, "yes" if o.active else "no",
                          "{}/{}".format(*counts.get(o.id, (0, 0)))] for o in orgs])
        report_count(len(orgs), "organization")
        return 0

    return _with_database(work)


def cmd_instances_list(args: argparse.Namespace) -> int:
    from shared.storage.instances import InstanceStore

    async def work(db: Database) -> int:
        instances = await InstanceStore(db).list(args.org)
        if args.json:  # credentials are references, but an instance is listed without them
            for i in instances:
                print_json({"id": i.id, "org_id": i.org_id, "connector_id": i.connector_id,
                            "name": i.name, "active": i.enabled, "server_url": i.server_url})
        else:
            print_table(["ID", "ORG", "CONNECTOR", "NAME", "ACTIVE", "SERVER"],
                        [[i.id, i.org_id, i.connector_id, i.name, "yes" if i.enabled else "no",
                          i.server_url or "(connector's)"] for i in instances])
        report_count(len(instances), "instance")
        return 0

    return _with_database(work)


def cmd_instances_show(args: argparse.Namespace) -> int:
    from shared.storage.instances import InstanceStore
    from shared.storage.schedules import ScheduleStore

    async def work(db: Database) -> int:
        instance = await InstanceStore(db).get(args.id)
        if instance is None:
            return _error(f"no instance {args.id!r} (see `bss-sync instances list`)")
        schedule = await ScheduleStore(db).effective(args.id)
        for line in describe_instance(instance, schedule):
            print(redact(line).rstrip())
        return 0

    return _with_database(work)


def describe_instance(instance: Any, schedule: Any) -> list[str]:
    """The lines of ``instances show``: credentials appear as their references only."""
    state = "yes" if instance.enabled else "no" + ("" if instance.org_active else
                                                   " (organization inactive)")
    lines = [
        f"instance     {instance.id}",
        f"name         {instance.name}",
        f"organization {instance.org_id}",
        f"connector    {instance.connector_id} (sha256 {instance.connector_sha256[:12]})",
        f"server       {instance.server_url or '(from the connector)'}",
        f"active       {state}",
    ]
    if instance.deactivated_at:
        lines.append(f"deactivated  {instance.deactivated_at.isoformat(timespec='seconds')}")
    if schedule is not None:
        lines.append(f"schedule     {schedule.cron} ({schedule.timezone}), from the "
                     f"{schedule.scope} level{'' if schedule.enabled else ', disabled'}")
    lines.append(f"variables    {json.dumps(instance.variables, sort_keys=True)}")
    lines.append("credentials  " + ("(none)" if not instance.credentials else ""))
    lines += [f"  {name:<12} {ref}" for name, ref in sorted(instance.credentials.items())]
    lines.append("permissions  " + ("(none)" if not instance.permissions else ""))
    for entity in sorted({p[0] for p in instance.permissions}):
        parts = [f"{d}: {', '.join(instance.permitted_actions(entity, d))}"
                 for d in ("push", "pull") if instance.permitted_actions(entity, d)]
        lines.append(f"  {entity:<12} {'   '.join(parts)}")
    lines.append(f"settings     {json.dumps(instance.settings, sort_keys=True)}")
    lines.append(f"updated      {instance.updated_at.isoformat(timespec='seconds')}")
    return lines


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """An aware datetime from ISO (``2024-05-01``, ``2024-05-01T10:00``) or ``30m``/``2d``.

    Naive times are UTC. Raises ``ValueError`` with a sentence saying what is accepted.
    """
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(text.strip())
    if match:
        amount, unit = float(match.group(1)), match.group(2).lower()
        return now - timedelta(**{_UNITS[unit]: amount})
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO date/time nor a duration like "
                         "30m, 1h, 2d or 1w") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_outcomes(values: Sequence[str] | None) -> list[str]:
    """Outcomes from repeated / comma-separated flags. Raises ``ValueError`` on an unknown one."""
    outcomes = [v.strip().lower() for value in values or () for v in value.split(",") if v.strip()]
    unknown = [o for o in outcomes if o not in OUTCOMES]
    if unknown:
        raise ValueError(f"unknown outcome {unknown[0]!r}; outcomes are {', '.join(OUTCOMES)}")
    return outcomes


def build_audit_query(args: argparse.Namespace) -> Any:
    """The ``AuditQuery`` for the search flags. Raises ``ValueError`` on a bad flag value."""
    from shared.audit.search import AuditQuery

    if args.limit < 1:
        raise ValueError("--limit must be at least 1")
    return AuditQuery(
        org=args.org, instance=args.instance, entity=args.entity, direction=args.direction,
        outcome=parse_outcomes(args.outcome) or None, record=args.record,
        external_id=args.external_id, run=args.run, message=args.message, service=args.service,
        action=args.action, error_class=args.error_class, correlation=args.correlation,
        http_status=args.http_status, attempt=args.attempt,
        since=parse_when(args.since) if args.since else None,
        until=parse_when(args.until) if args.until else None,
        text=args.text, limit=args.limit,
    )


def cmd_audit_search(args: argparse.Namespace) -> int:
    from shared.audit.search import search

    try:
        query = build_audit_query(args)
    except ValueError as exc:
        print(f"bss-sync: {exc}", file=sys.stderr)
        return 2

    async def work(db: Database) -> int:
        rows = await search(db, query)
        if args.json:
            for row in rows:
                print_json(row.to_json())
        else:
            print_table(["AT", "SERVICE", "ORG", "INSTANCE", "ENTITY", "DIR", "ACTION", "RECORD",
                         "EXTERNAL", "OUTCOME", "TRY", "HTTP", "ERROR"],
                        [_audit_cells(row) for row in rows])
        report_count(len(rows), "row", limit=query.limit)
        return 0

    return _with_database(work)


def _audit_cells(row: Any) -> list[str]:
    error = " ".join(p for p in (row.error_class, row.error_message) if p)
    return [row.at.isoformat(timespec="milliseconds").replace("+00:00", "Z"), row.service,
            row.org_id, row.instance_id, row.entity, row.direction, row.action, row.record_id,
            row.external_id, row.outcome, str(row.attempt),
            "" if row.http_status is None else str(row.http_status), error]


def print_json(obj: dict[str, Any]) -> None:
    """One line of JSON Lines on stdout (strings redacted, as the table's cells are)."""
    print(json.dumps(redact_value(obj), default=str, ensure_ascii=False))


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """Columns aligned on the widest cell; long cells shortened; nothing at all when empty
    (not even the headers: the count on stderr says so)."""
    if not rows:
        return
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for row in [headers, *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    text = "" if value is None else redact(str(value)).replace("\n", " ")
    return text if len(text) <= TABLE_CELL_WIDTH else text[: TABLE_CELL_WIDTH - 1] + "…"
