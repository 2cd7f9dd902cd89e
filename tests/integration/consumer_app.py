"""A consumer process for the integration tests: the real runtime, a trivial handler.

    python -m tests.integration.consumer_app --service pusher --sleep-ms 5 [--burst-ms 500]

Infrastructure comes from the environment like a service's (``AMQP_URL``,
``DATABASE_URL``, ``RETRY_DELAYS``, ``DELIVERY_LIMIT``, ``CONCURRENCY``…). The
handler sleeps ``--sleep-ms`` (simulated I/O) and reports ``updated``; the exit
code is the runner's (0 after a graceful stop).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from shared.audit.record import Outcome
from shared.messaging.codec import SYNC_CODEC, Handler, InboundMessage
from shared.messaging.runner import RuntimeDeps, main
from shared.messaging.topology import PUSHER


def sleeping_handler(seconds: float) -> Handler:
    async def handle(message: InboundMessage[object]) -> Outcome:
        await asyncio.sleep(seconds)  # not a wait: simulated I/O (a handler's call out)
        return Outcome.UPDATED

    return handle


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="consumer_app")
    parser.add_argument("--service", default=PUSHER)
    parser.add_argument("--sleep-ms", type=float, default=5.0)
    parser.add_argument("--burst-ms", type=float, default=None,
                        help="stop once the queue has been empty this long")
    args = parser.parse_args(argv)

    def factory(_deps: RuntimeDeps) -> Handler:
        return sleeping_handler(args.sleep_ms / 1000.0)

    burst = None if args.burst_ms is None else args.burst_ms / 1000.0
    return main(args.service, SYNC_CODEC, factory, burst_idle=burst)


if __name__ == "__main__":
    sys.exit(run())
