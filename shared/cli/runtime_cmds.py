"""``bss-sync topology declare`` and ``bss-sync dead list``.

The broker comes from ``AMQP_URL``; the retry ladder and delivery limit from
``RETRY_DELAYS`` and ``DELIVERY_LIMIT``. ``topology declare`` migrates the queues
whose arguments changed (:mod:`shared.messaging.migration`) and says what it moved.
Problems a person can act on (broker unreachable, services still consuming while
queues must be migrated, a queue that does not exist yet) are one line on stderr
naming the broker, exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shared.cli.parser import JSON_LINES_HELP, Subparsers, add_command, add_group, report_count
from shared.errors import ConfigurationError, InfrastructureError
from shared.logging import redact
from shared.messaging.migration import migrate_topology
from shared.messaging.tooling import PeekedMessage, QueueMissing, peek
from shared.messaging.topology import PUSHER, SERVICES, WorkQueue
from shared.settings import get_settings

DEAD_HEADERS = ("x-error-class", "x-error", "x-http-status", "x-failed-step", "x-attempts",
                "x-first-failed-at", "x-org-id", "x-instance-id", "x-entity", "x-record-id",
                "x-external-id", "x-original-routing-key")


def register(sub: Subparsers) -> None:
    """Add ``topology`` and ``dead``."""
    topology_sub = add_group(sub, "topology", "RabbitMQ exchanges and queues")
    add_command(topology_sub, "declare",
                "declare every exchange, queue and binding, migrating queues that differ",
                "Declare every exchange, queue and binding on AMQP_URL's vhost, with the "
                "retry ladder of RETRY_DELAYS and the delivery limit of DELIVERY_LIMIT; one "
                "line per entity. Idempotent. A queue whose arguments differ (one of an "
                "older version, or a changed DELIVERY_LIMIT) is replaced and its messages "
                "moved across with publisher confirms, with a line saying how many; "
                "stop the services first. The services declare the topology too when "
                "they start, and refuse to start on one that differs."
                ).set_defaults(func=cmd_topology_declare)

    dead_sub = add_group(sub, "dead", "dead-lettered messages")
    listing = add_command(dead_sub, "list",
                          "show dead letters with their headers; they stay in the queue",
                          "Show the dead letters at the head of a service's dead queue with "
                          "their x- headers, and leave them there. Text (or JSON Lines with "
                          "--json) on stdout; how many on stderr.")
    listing.add_argument("--service", choices=SERVICES, default=PUSHER,
                         help="whose dead queue (default: %(default)s)")
    listing.add_argument("--limit", type=_positive, default=20, metavar="N",
                         help="messages at most (default: %(default)s)")
    listing.add_argument("--json", action="store_true",
                         help=JSON_LINES_HELP.format(row="message", instead="text")
                         + " (default: off)")
    listing.set_defaults(func=cmd_dead_list)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _fail(message: str) -> int:
    print(f"bss-sync: {redact(message)}", file=sys.stderr)
    return 1


def cmd_topology_declare(_args: argparse.Namespace) -> int:
    settings = get_settings()
    try:
        declared, migrated = migrate_topology(settings.amqp_url, settings.retry_delays,
                                              settings.delivery_limit)
    except (ConfigurationError, InfrastructureError) as exc:
        return _fail(str(exc))
    for line in declared:
        print(line)
    for queue in migrated:
        print(queue)
    return 0


def cmd_dead_list(args: argparse.Namespace) -> int:
    settings = get_settings()
    queue = WorkQueue(args.service, settings.retry_delays).dead_queue
    try:
        messages = peek(settings.amqp_url, queue, args.limit)
    except QueueMissing as exc:
        return _fail(f"{exc}; declare the topology with `bss-sync topology declare`")
    except InfrastructureError as exc:
        return _fail(str(exc))
    for message in messages:
        print(json.dumps(_as_json(message), default=str, ensure_ascii=False) if args.json
              else _as_text(message))
    report_count(len(messages), f"dead letter shown from {queue}",
                 f"dead letters shown from {queue}", limit=args.limit,
                 empty=f"no dead letters in {queue}")
    return 0


def _as_json(message: PeekedMessage) -> dict[str, Any]:
    return {"message_id": message.message_id, "routing_key": message.routing_key,
            "headers": {k: v for k, v in message.headers.items() if k.startswith("x-")
                        and not k.startswith(("x-death", "x-first-death", "x-last-death"))},
            "body": redact(message.body.decode("utf-8", "replace"))}


def _as_text(message: PeekedMessage) -> str:
    lines = [f"message {message.message_id or '(no id)'}  routing key {message.routing_key}"]
    for header in DEAD_HEADERS:
        if header in message.headers:
            lines.append(f"  {header}: {redact(str(message.headers[header]))}")
    return "\n".join(lines)
