"""``bss-sync topology declare`` and ``bss-sync dead list``.

The broker comes from ``AMQP_URL``; the retry ladder and delivery limit from
``RETRY_DELAYS`` and ``DELIVERY_LIMIT``. Problems a person can act on (broker
unreachable, a queue whose arguments changed) are one line on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shared.errors import ConfigurationError, InfrastructureError
from shared.logging import redact
from shared.messaging.tooling import PeekedMessage, peek
from shared.messaging.topology import SERVICES, WorkQueue, declare_topology
from shared.settings import get_settings

DEAD_HEADERS = ("x-error-class", "x-error", "x-http-status", "x-attempts", "x-first-failed-at",
                "x-org-id", "x-instance-id", "x-entity", "x-record-id", "x-external-id",
                "x-original-routing-key")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``topology`` and ``dead``."""
    topology = sub.add_parser("topology", help="RabbitMQ exchanges and queues")
    topology_sub = topology.add_subparsers(dest="topology_command", metavar="COMMAND")
    topology_sub.add_parser(
        "declare", help="declare every exchange, queue and binding (idempotent)",
    ).set_defaults(func=cmd_topology_declare)
    topology.set_defaults(func=_usage(topology))

    dead = sub.add_parser("dead", help="dead-lettered messages")
    dead_sub = dead.add_subparsers(dest="dead_command", metavar="COMMAND")
    listing = dead_sub.add_parser("list", help="show dead letters with their headers; "
                                               "they stay in the queue")
    listing.add_argument("--service", choices=SERVICES, default="pusher",
                         help="whose dead queue (default pusher)")
    listing.add_argument("--limit", type=int, default=20, help="messages at most (default 20)")
    listing.add_argument("--json", action="store_true", help="JSON lines instead of text")
    listing.set_defaults(func=cmd_dead_list)
    dead.set_defaults(func=_usage(dead))


def _usage(parser: argparse.ArgumentParser) -> Any:
    def show(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return show


def _fail(exc: Exception) -> int:
    print(f"bss-sync: {redact(str(exc))}", file=sys.stderr)
    return 1


def cmd_topology_declare(_args: argparse.Namespace) -> int:
    settings = get_settings()
    try:
        declared = declare_topology(settings.amqp_url, settings.retry_delays,
                                    settings.delivery_limit)
    except (ConfigurationError, InfrastructureError) as exc:
        return _fail(exc)
    for line in declared:
        print(line)
    return 0


def cmd_dead_list(args: argparse.Namespace) -> int:
    settings = get_settings()
    queue = WorkQueue(args.service, settings.retry_delays).dead_queue
    try:
        messages = peek(settings.amqp_url, queue, max(args.limit, 0))
    except InfrastructureError as exc:
        return _fail(exc)
    for message in messages:
        print(json.dumps(_as_json(message), default=str) if args.json else _as_text(message))
    if not args.json:
        print(f"{len(messages)} message(s) shown from {queue}; they stay in the queue.")
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
