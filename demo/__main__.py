"""``python -m demo [--count N] [--no-wait] [--database NAME] [--vhost NAME] …``"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from demo.run import DEFAULT_DATABASE, DEFAULT_VHOST, Demo, Options


def parse(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="bss-sync at work: a sandbox BSS kept in sync with an Acme CRM stand-in, "
                    "against the RabbitMQ and PostgreSQL of AMQP_URL and DATABASE_URL.")
    parser.add_argument("--count", type=int, default=20,
                        help="records seeded per entity (account, contact, case; default 20)")
    parser.add_argument("--no-wait", dest="wait", action="store_false",
                        help="exit after the report (stopping everything) instead of running "
                             "until Ctrl-C")
    parser.add_argument("--database", default=DEFAULT_DATABASE,
                        help=f"PostgreSQL database, dropped and recreated (default "
                             f"{DEFAULT_DATABASE})")
    parser.add_argument("--vhost", default=DEFAULT_VHOST,
                        help=f"RabbitMQ vhost, deleted and recreated (default {DEFAULT_VHOST})")
    parser.add_argument("--bss-port", type=int, default=8080,
                        help="port of the sandbox BSS if free (default 8080; 0: any free port)")
    parser.add_argument("--crm-port", type=int, default=3000,
                        help="port of the Acme CRM stand-in if free (default 3000; 0: any)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for each sync (default 60 + --count)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="logs and generated files (default .demo/ at the repository root)")
    parser.add_argument("--drop-at-exit", action="store_true",
                        help="drop the database and the vhost when stopping (default: kept "
                             "for a look afterwards, recreated on the next run)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    defaults = Options()
    return Options(count=args.count, database=args.database, vhost=args.vhost, wait=args.wait,
                   bss_port=args.bss_port, crm_port=args.crm_port,
                   timeout=args.timeout or 60.0 + args.count,
                   workdir=(args.workdir or defaults.workdir).resolve(),
                   drop_at_exit=args.drop_at_exit)


def main(argv: Sequence[str] | None = None) -> int:
    return Demo(parse(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
