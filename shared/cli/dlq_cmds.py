"""``bss-sync dlq``: list, show, replay, redeliver and purge dead letters.

The dead queues are ``pusher.dead`` and ``puller.dead`` (:mod:`shared.messaging.redelivery`
says how they are read without losing what another process reads at the same time).
``list`` and ``show`` leave every letter where it is; ``replay`` moves letters back to
their work queue (``trigger: manual``), ``redeliver`` runs the daily redelivery now,
``purge`` removes letters after asking. Every letter moved, parked or purged has an
audit row (service ``dlq``: ``bss-sync audit search --text …`` or by record).
The broker comes from ``AMQP_URL``, the audit log from ``DATABASE_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from shared.audit.writer import AuditWriter
from shared.cli.parser import JSON_LINES_HELP, Subparsers, add_command, add_group, report_count
from shared.cli.storage_cmds import _RELATIVE, _UNITS, parse_when, print_table
from shared.errors import ConfigurationError, InfrastructureError
from shared.logging import logging_to, redact
from shared.messaging.dead_letters import DEAD_LETTER_SERVICES, DeadLetter, LetterFilter
from shared.messaging.redelivery import (
    PassReport,
    purge,
    read_letters,
    redeliver,
    replay,
)
from shared.messaging.tooling import QueueMissing
from shared.settings import get_settings
from shared.storage.db import Database

T = TypeVar("T")
FILTER_KEYS = ("org", "instance", "entity", "error-class", "since")
DECLARE_HINT = "declare the topology with `bss-sync topology declare`"


def register(sub: Subparsers) -> None:
    """Add ``dlq`` and its subcommands."""
    dlq = add_group(sub, "dlq", "dead letters: list, show, replay, redeliver, purge")

    listing = add_command(
        dlq, "list", "list dead letters (they stay in their queue)",
        "List the dead letters of pusher.dead and puller.dead (or one of them), oldest "
        "first: when each died, its record, its error, the attempts of its last life and "
        "how often it was redelivered. They stay in the queue. A table (or JSON Lines "
        "with --json) on stdout, how many on stderr.")
    _add_service(listing)
    _add_filters(listing)
    listing.add_argument("--json", action="store_true",
                         help=JSON_LINES_HELP.format(row="dead letter", instead="a table")
                         + " (default: off)")
    listing.set_defaults(func=cmd_list)

    show = add_command(
        dlq, "show", "show one dead letter: every header and the body, credentials masked",
        "Print one dead letter as JSON: its headers and its body, with credentials masked "
        "(values under credential-like keys, URL passwords, and the instance's own "
        "credentials when they can be resolved here). It stays in the queue.")
    show.add_argument("id", metavar="ID", help="its message id (see `bss-sync dlq list`)")
    _add_service(show)
    show.set_defaults(func=cmd_show)

    again = add_command(
        dlq, "replay", "move dead letters back to their work queue now",
        "Move dead letters back to their work queue, each as a new message (trigger "
        "manual, redeliveries raised, attempts from 0), published with a confirm before "
        "the dead letter is removed; the others stay. Name them by id, by --filter, or "
        "take --all.")
    again.add_argument("ids", nargs="*", metavar="ID", help="message ids of dead letters")
    _add_service(again)
    _add_filter_option(again)
    again.add_argument("--all", action="store_true", help="every dead letter (default: off)")
    again.set_defaults(func=cmd_replay)

    now = add_command(
        dlq, "redeliver", "run the daily redelivery of dead letters now",
        "Move every dead letter of pusher.dead and puller.dead back to its work queue "
        "(trigger redelivery, redeliveries raised), as the dispatcher does every day; "
        "with --max-age, those that first failed longer ago go to <service>.parked "
        "instead. One process at a time across the installation (a PostgreSQL advisory "
        "lock): exit 1 when another is redelivering.")
    now.add_argument("--max-age", type=_duration, metavar="AGE",
                     help="park letters that first failed longer ago than this: 30d, 12h, "
                          "1w (default: REDELIVERY_MAX_AGE_DAYS, unset: every letter goes "
                          "back)")
    _add_service(now)
    now.set_defaults(func=cmd_redeliver)

    drop = add_command(
        dlq, "purge", "remove the dead letters a filter picks (asks first; audited)",
        "Remove the dead letters --filter picks from their dead queue, each with an audit "
        "row. Says how many match and asks before removing them; --yes does not ask "
        "(needed when stdin is not a terminal). The others stay.")
    _add_service(drop)
    _add_filter_option(drop)
    drop.add_argument("--yes", action="store_true",
                      help="do not ask for confirmation (default: off)")
    drop.set_defaults(func=cmd_purge)


# --------------------------------------------------------------------------- options


def _add_service(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--service", choices=DEAD_LETTER_SERVICES,
                        help="only this service's dead queue (default: both)")


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--org", metavar="ORG",
                        help="only this organization's (default: every organization)")
    parser.add_argument("--instance", metavar="ID",
                        help="only this instance's (default: every instance)")
    parser.add_argument("--entity", metavar="ENTITY",
                        help="only this entity's (default: every entity)")
    parser.add_argument("--error-class", metavar="CLASS",
                        help="only this error class, e.g. RemoteRejected (default: any)")
    parser.add_argument("--since", metavar="TIME",
                        help="only those that died since: ISO time, or 30m, 2h, 7d ago "
                             "(default: any time)")


def _add_filter_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                        help=f"pick letters by {', '.join(FILTER_KEYS)} (repeat to narrow: "
                             "every one must match), e.g. --filter entity=contact "
                             "(default: none)")


def _duration(text: str) -> timedelta:
    match = _RELATIVE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 12h, 30d or 1w")
    amount, unit = float(match.group(1)), match.group(2).lower()
    return timedelta(**{_UNITS[unit]: amount})


def letter_filter(args: argparse.Namespace) -> LetterFilter:
    """The filter of ``list``'s flags or of ``--filter`` options (and ids). Raises
    ``ValueError`` with a sentence for a key or a time it does not know."""
    values: dict[str, str] = {}
    for name, key in (("org", "org"), ("instance", "instance"), ("entity", "entity"),
                      ("error_class", "error-class"), ("since", "since")):
        if getattr(args, name, None):
            values[key] = getattr(args, name)
    for item in getattr(args, "filter", []) or []:
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in FILTER_KEYS or not value.strip():
            raise ValueError(f"--filter {item!r}: expected KEY=VALUE with KEY one of "
                             f"{', '.join(FILTER_KEYS)}")
        values[key] = value.strip()
    since: datetime | None = parse_when(values["since"]) if "since" in values else None
    return LetterFilter(ids=frozenset(getattr(args, "ids", None) or ()),
                        org_id=values.get("org"), instance_id=values.get("instance"),
                        entity=values.get("entity"), error_class=values.get("error-class"),
                        since=since)


def _services(args: argparse.Namespace) -> tuple[str, ...]:
    return (args.service,) if args.service else DEAD_LETTER_SERVICES


# --------------------------------------------------------------------------- commands


def cmd_list(args: argparse.Namespace) -> int:
    try:
        wanted = letter_filter(args)
    except ValueError as exc:
        return _fail(str(exc))
    letters: list[DeadLetter] = []
    for service in _services(args):
        found = _run(read_letters(get_settings().amqp_url, service, wanted))
        if isinstance(found, int):
            return found
        letters += found
    if args.json:
        for letter in letters:
            print(json.dumps(_row_json(letter), ensure_ascii=False, default=str))
    else:
        print_table(["WHEN", "SERVICE", "ID", "ORG", "INSTANCE", "ENTITY", "RECORD",
                     "ERROR", "ATTEMPTS", "REDELIVERIES"],
                    [_row_cells(letter) for letter in letters])
    report_count(len(letters), "dead letter", empty="no dead letters")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    wanted = LetterFilter(ids=frozenset({args.id}))
    for service in _services(args):
        found = _run(read_letters(get_settings().amqp_url, service, wanted))
        if isinstance(found, int):
            return found
        if found:
            _register_credentials(found[0])
            print(json.dumps(found[0].shown(), indent=2, ensure_ascii=False, default=str))
            return 0
    where = " or ".join(f"{s}.dead" for s in _services(args))
    return _fail(f"no dead letter {args.id!r} in {where} (it may have been moved, or be "
                 "held by another reader right now)")


def cmd_replay(args: argparse.Namespace) -> int:
    try:
        wanted = letter_filter(args)
    except ValueError as exc:
        return _fail(str(exc))
    if wanted.empty and not args.all:
        return _fail("name the dead letters to replay: IDs, --filter KEY=VALUE, or --all")
    if args.all and not wanted.empty:
        return _fail("--all takes every dead letter; leave out the IDs and --filter")
    settings = get_settings()
    reports = []
    for service in _services(args):
        report = _with_audit(lambda audit, s=service: replay(settings.amqp_url, s, wanted,
                                                               audit))
        if isinstance(report, int):
            return report
        reports.append(report)
    return _summarise(reports, "moved")


def cmd_redeliver(args: argparse.Namespace) -> int:
    settings = get_settings()

    async def work(db: Database, audit: AuditWriter) -> Any:
        max_age = args.max_age
        if max_age is None and settings.redelivery_max_age_days is not None:
            max_age = timedelta(days=settings.redelivery_max_age_days)
        return await redeliver(settings.amqp_url, db, audit, max_age=max_age,
                               services=_services(args))

    result = _with_audit(None, work)
    if isinstance(result, int):
        return result
    return _summarise(list(result.passes), "moved")


def cmd_purge(args: argparse.Namespace) -> int:
    try:
        wanted = letter_filter(args)
    except ValueError as exc:
        return _fail(str(exc))
    if wanted.empty:
        return _fail("purge needs --filter KEY=VALUE (one or more); it never takes every "
                     "dead letter by default")
    settings = get_settings()
    if not args.yes:
        if not sys.stdin.isatty():
            return _fail("purge asks before removing letters; run it in a terminal or add "
                         "--yes")
        count = 0
        for service in _services(args):
            found = _run(read_letters(settings.amqp_url, service, wanted))
            if isinstance(found, int):
                return found
            count += len(found)
        if count == 0:
            print(f"no dead letters match {wanted.describe()}", file=sys.stderr)
            return 0
        answer = input(f"Remove {count} dead letter{'s' if count != 1 else ''} matching "
                       f"{wanted.describe()}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing removed", file=sys.stderr)
            return 1
    reports = []
    for service in _services(args):
        report = _with_audit(lambda audit, s=service: purge(settings.amqp_url, s, wanted,
                                                              audit))
        if isinstance(report, int):
            return report
        reports.append(report)
    return _summarise(reports, "purged")


# --------------------------------------------------------------------------- plumbing


def _row_cells(letter: DeadLetter) -> list[Any]:
    return [letter.when.isoformat(timespec="seconds") if letter.when else "", letter.service,
            letter.message_id, letter.org_id, letter.instance_id, letter.entity,
            letter.record, f"{letter.error_class or ''}: {letter.error}".strip(": "),
            letter.attempts, letter.redeliveries]


def _row_json(letter: DeadLetter) -> dict[str, Any]:
    return {"when": letter.when.isoformat() if letter.when else None,
            "service": letter.service, "message_id": letter.message_id,
            "org_id": letter.org_id, "instance_id": letter.instance_id,
            "entity": letter.entity, "record": letter.record,
            "error_class": letter.error_class, "error": letter.error,
            "attempts": letter.attempts, "redeliveries": letter.redeliveries}


def _summarise(reports: Sequence[PassReport], verb: str) -> int:
    for report in reports:
        print(report.line())
        for error in report.errors:
            print(f"  {redact(error)}", file=sys.stderr)
    failed = sum(r.failed for r in reports)
    if failed:
        print(f"bss-sync: {failed} dead letters could not be {verb}; they are still in "
              "their dead queue", file=sys.stderr)
    return 1 if failed else 0


def _register_credentials(letter: DeadLetter) -> None:
    """Register the letter's instance's credentials so that :func:`redact` masks their
    values wherever they appear in it; best effort (no database, no instance, a
    reference that cannot be resolved here: the key-based masking still applies)."""
    if not letter.instance_id:
        return
    from shared.credentials import resolve_credentials
    from shared.storage.instances import InstanceStore

    async def work() -> None:
        async with Database.from_settings(get_settings(), min_size=1, max_size=1) as db:
            instance = await InstanceStore(db).get(letter.instance_id or "")
        if instance is not None:
            resolve_credentials(instance.credentials)

    try:
        asyncio.run(work())
    except Exception:  # masking by key still applies; nothing worth reporting
        return


def _run(work: Awaitable[T]) -> T | int:
    """``work``'s result, or the exit code of a failure a person can act on."""
    try:
        return asyncio.run(work)  # type: ignore[arg-type]
    except QueueMissing as exc:
        return _fail(f"{exc}; {DECLARE_HINT}")
    except (ConfigurationError, InfrastructureError) as exc:
        return _fail(str(exc))


def _with_audit(per_audit: Callable[[AuditWriter], Awaitable[T]] | None,
                work: Callable[[Database, AuditWriter], Awaitable[T]] | None = None,
                ) -> T | int:
    """Run with the database and an audit writer open (``per_audit(audit)`` or
    ``work(db, audit)``); failures as :func:`_run`."""
    settings = get_settings()

    async def run() -> T:
        async with (Database.from_settings(settings, min_size=1, max_size=4) as db,
                    AuditWriter(db, settings.audit_batch_size,
                                settings.audit_batch_interval) as audit):
            if work is not None:
                return await work(db, audit)
            assert per_audit is not None
            return await per_audit(audit)

    with logging_to(sys.stderr, settings.log_level):  # stdout is the summary
        return _run(run())  # RedeliveryBusy is an InfrastructureError: one line, exit 1


def _fail(message: str) -> int:
    print(f"bss-sync: {redact(message)}", file=sys.stderr)
    return 1
