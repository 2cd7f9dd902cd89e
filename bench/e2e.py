"""bss-sync beside Celery, in one run, on the same work: N accounts of the stand-in BSS
pushed to a stand-in third party, each way, at 0 ms and at 50 ms third-party latency.

* **bss-sync** — the push path as deployed: N BSS events waiting in ``dispatcher.events``
  (published while the services are down), then the dispatcher and the pusher(s)
  start: dispatcher → ``sync.push`` → pusher → third party (match GET, create POST),
  the BSS read, the link, the audit row. Two pushers of 64 handlers at 0 ms, one of
  128 at 50 ms (bench/push.py's settings).
* **Celery** (``bench/celery_tasks.py``; the optional ``bench`` extra pins it), the N
  tasks waiting in their queue, then one worker starts: the prefork pool at the
  process count (2 here), threads at 64, gevent at 200 (``broker_heartbeat=0``),
  each with two tasks: *lean* (POST + audit INSERT: less than the pusher does) and
  *same work* (BSS GET, match GET, POST, link upsert, audit INSERT: what the pusher
  does for a new account).

Every figure is a *drain*: records whose audit row is committed (bss-sync: the
pusher's ``created`` rows; Celery: ``bench_audit`` rows) / the time from the
consumers' start to the last such row. ``lost`` counts records with no row once
nothing moved for 10 s (90 s before the first: start-up on a busy machine) — a Celery
task that failed for good is acked, and its record lost; a pass stopped by ``--cap``
prints its rate over what it finished and no loss figure. The ratio is bss-sync's
records/s over the best Celery pool's, per task and latency. Runs on its own database
and vhost, dropped at the end.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/e2e.py [--records 10000] [--delays 0,50]
                                  [--pools prefork,threads,gevent] [--tasks lean,same_work]
                                  [--cap 180]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.pull import Bench, exit_on_sigterm  # noqa: E402
from bench.run import RunBench  # noqa: E402
from sandbox.server import SandboxServer  # noqa: E402
from sandbox.settings import SandboxSettings  # noqa: E402
from shared.messaging.topology import DISPATCHER, DISPATCHER_QUEUE, PUSHER  # noqa: E402

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ORG, INSTANCE = "bench", "bench-crm"
POOLS = {"prefork": str(os.cpu_count() or 2), "threads": "64", "gevent": "200"}
#: bss-sync's settings per latency: pushers and handlers each (bench/push.py's).
BSS_SYNC = {0: (2, 64), 50: (1, 128)}
IDLE = 10.0
#: Seconds the consumers may take to start (and make the first record) on a busy machine.
STARTUP = 90.0


class SideBySide(Bench):
    """``bench/pull.py``'s harness (database, broker, processes, stand-ins), its own
    passes."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.standins: dict[int, str] = {}
        self.ids: list[str] = []
        self.accounts: list[dict[str, Any]] = []

    # -- set-up ------------------------------------------------------------------------

    def setup(self) -> None:
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        self.broker.start()
        for command in (["db", "upgrade"], ["topology", "declare"]):
            subprocess.run([sys.executable, "-m", "shared.cli.main", *command],
                           env=self.env(), check=True, stdout=subprocess.DEVNULL)
        with self.db() as conn:
            conn.execute("CREATE TABLE bench_audit (id bigserial PRIMARY KEY, task text,"
                         " record_id text, external_id text, outcome text,"
                         " at timestamptz NOT NULL DEFAULT clock_timestamp())")
            conn.execute("CREATE TABLE bench_links (record_id text PRIMARY KEY,"
                         " external_id text, updated_at timestamptz DEFAULT now())")
        settings = SandboxSettings.from_env(database_url=self.database_url,
                                            amqp_url=self.broker.amqp_url)
        self.sandbox = SandboxServer(settings).start()
        for delay in self.args.delays:
            self.standins[delay] = self.start_standin("--delay", str(delay),
                                                      name=f"stand-in-{delay}")
        self.install(self.standins[self.args.delays[0]])
        seeder = RunBench.__new__(RunBench)  # its seeding only: N accounts through the API
        seeder.sandbox, seeder.records = self.sandbox, self.records
        seconds = seeder.seed_bss()
        with self.db() as conn:
            rows = conn.execute("SELECT id, data FROM sandbox.records WHERE org_id = %s"
                                " AND entity = 'account' ORDER BY id", (ORG,)).fetchall()
        self.ids = [r[0] for r in rows]
        self.accounts = [{**r[1], "id": r[0]} for r in rows]
        print(f"set-up: {len(self.ids):,} accounts in the sandbox BSS ({seconds:.0f} s, not "
              f"timed); stand-ins at {', '.join(f'{d} ms' for d in self.standins)}")

    def teardown(self) -> None:
        for name in list(self.processes):
            self.stop(name)
        if self.sandbox is not None:
            self.sandbox.stop()
        self.broker.close()
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "AMQP_URL": self.broker.amqp_url,
                "DATABASE_URL": self.database_url, "LOG_LEVEL": "WARNING",
                "LOG_FORMAT": "json", "BENCH_API_KEY": "bench-key",
                "SCHEDULES_ENABLED": "false", **extra}

    def db(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.database_url, autocommit=True)

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def install(self, server: str) -> None:
        installation = {
            "connectors": [{"id": "acme", "spec": str(ROOT / "connectors" / "acme-crm.json")}],
            "organizations": [{"id": ORG, "name": "Bench", "instances": [{
                "id": INSTANCE, "name": "Bench CRM", "connector": "acme", "server": server,
                "credentials": {"apiKey": "env:BENCH_API_KEY"},
                "permissions": {"account": {"push": ["create", "update", "delete"]}},
                "rateLimit": {"requests": 100000, "per": "1s", "concurrency": 512}}]}]}
        path = self.tmp / "installation.json"
        path.write_text(json.dumps(installation))
        subprocess.run([sys.executable, "-m", "shared.cli.main", "apply", str(path)],
                       env=self.env(), check=True, stdout=subprocess.DEVNULL)

    # -- bss-sync ----------------------------------------------------------------------

    def bss_sync(self, delay: int) -> dict[str, Any]:
        """One drain through the dispatcher and the pusher(s) to the stand-in at ``delay``."""
        self.install(self.standins[delay])
        with self.db() as conn:
            conn.execute("TRUNCATE links")  # every account is a create again
        self.purge(DISPATCHER_QUEUE)
        self.publish_events()
        pushers, concurrency = BSS_SYNC.get(delay, (1, 128))
        since = time.time()
        started = time.time()
        self.start(DISPATCHER, ["-m", "services.dispatcher"])
        for n in range(pushers):
            self.start(f"{PUSHER}-{n + 1}", ["-m", "services.pusher"],
                       BSS_API_URL=self.sandbox.url if self.sandbox else "",
                       CONCURRENCY=str(concurrency))
        result = self.drain("SELECT count(DISTINCT record_id), extract(epoch FROM max(at))"
                            " FROM audit_log WHERE service = 'pusher' AND outcome = 'created'"
                            " AND at >= to_timestamp(%s)", since, started)
        for name in [DISPATCHER, *(f"{PUSHER}-{n + 1}" for n in range(pushers))]:
            self.stop(name)
        result["setting"] = f"{pushers} pusher(s) x {concurrency}"
        return result

    def publish_events(self) -> None:
        """N ``account.updated`` events on ``bss.events``, as the BSS publishes them."""
        connection = pika.BlockingConnection(pika.URLParameters(self.broker.amqp_url))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            now = datetime.now(UTC).isoformat()
            for record_id in self.ids:
                event = {"id": str(uuid.uuid4()), "entity": "account", "event": "updated",
                         "organizationId": ORG, "recordId": record_id, "occurredAt": now}
                channel.basic_publish("bss.events", "account.updated",
                                      json.dumps(event).encode(), pika.BasicProperties(
                                          content_type="application/json", delivery_mode=2,
                                          message_id=event["id"]))
        finally:
            connection.close()

    # -- Celery ------------------------------------------------------------------------

    def celery(self, task: str, pool: str, delay: int) -> dict[str, Any]:
        """N ``task`` tasks queued, then one worker of ``pool`` drains them."""
        queue = f"bench-{task}-{pool}-{delay}"
        env = {"BENCH_AMQP_URL": self.broker.amqp_url, "BENCH_DATABASE_URL": self.database_url,
               "BENCH_BSS_URL": self.sandbox.url if self.sandbox else "",
               "BENCH_THIRD_PARTY_URL": self.standins[delay], "BENCH_POOL": pool}
        with self.db() as conn:
            conn.execute("TRUNCATE bench_audit, bench_links")
        self.enqueue(task, queue, env)
        since = started = time.time()
        self.start("celery", ["-m", "celery", "-A", "bench.celery_tasks", "worker", "-P", pool,
                              "-c", POOLS[pool], "-Q", queue, "--without-gossip",
                              "--without-mingle", "--without-heartbeat", "-l", "WARNING"],
                   **env)
        result = self.drain("SELECT count(DISTINCT record_id), extract(epoch FROM max(at))"
                            " FROM bench_audit WHERE at >= to_timestamp(%s)", since, started)
        self.stop("celery")
        self.purge(queue)
        result["setting"] = f"{pool} x {POOLS[pool]}"
        return result

    def enqueue(self, task: str, queue: str, env: dict[str, str]) -> None:
        os.environ.update(env)
        from bench import celery_tasks  # the broker URL is read at import

        celery_tasks.app.conf.broker_url = env["BENCH_AMQP_URL"]
        with celery_tasks.app.connection_for_write() as connection, \
                celery_tasks.app.producer_or_acquire() as _producer:
            for account in self.accounts:
                args: list[Any] = ([account] if task == "lean" else [ORG, account["id"]])
                getattr(celery_tasks, task).apply_async(args, queue=queue,
                                                        connection=connection)

    # -- measuring ---------------------------------------------------------------------

    def drain(self, sql: str, since: float, started: float) -> dict[str, Any]:
        """Wait until N records are done, or nothing moved for IDLE s, or the cap; the
        records done, the time to the last one, and whether it finished."""
        cap = time.monotonic() + self.args.cap
        done, last, moved = 0, started, time.monotonic()
        with self.db() as conn:
            while True:
                count, last_at = conn.execute(sql, (since,)).fetchone() or (0, None)
                if count != done:
                    done, moved = int(count), time.monotonic()
                    last = float(last_at or started)
                if done >= self.records:
                    return {"done": done, "seconds": last - started, "finished": True}
                if time.monotonic() - moved > (IDLE if done else STARTUP):
                    return {"done": done, "seconds": last - started, "finished": True}
                if time.monotonic() > cap:
                    return {"done": done, "seconds": last - started, "finished": False}
                for name, process in self.processes.items():
                    if process.poll() is not None:
                        raise RuntimeError(f"{name} exited; see {self.tmp / (name + '.log')}")
                time.sleep(0.25)

    def purge(self, queue: str) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.broker.amqp_url))
        try:
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                connection.channel().queue_purge(queue)
        finally:
            connection.close()


def rate(result: dict[str, Any]) -> float:
    return result["done"] / result["seconds"] if result["seconds"] > 0 else 0.0


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000, help="accounts (default 10000)")
    parser.add_argument("--delays", default="0,50",
                        help="third-party latencies in ms (default 0,50)")
    parser.add_argument("--pools", default="prefork,threads,gevent",
                        help="Celery pools (default prefork,threads,gevent)")
    parser.add_argument("--tasks", default="lean,same_work",
                        help="Celery tasks (default lean,same_work)")
    parser.add_argument("--cap", type=float, default=180,
                        help="seconds a pass may run at most (default 180)")
    parser.add_argument("--broker", choices=("own", "shared"), default="shared",
                        help="a RabbitMQ node of its own, or a vhost of AMQP_URL's "
                             "(default shared)")
    args = parser.parse_args()
    args.delays = [int(d) for d in args.delays.split(",")]
    pools = [p for p in args.pools.split(",") if p]
    tasks = [t for t in args.tasks.split(",") if t]
    command = "python bench/e2e.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    bench = SideBySide(args)
    rows: list[tuple[int, str, str, dict[str, Any]]] = []
    try:
        bench.setup()
        for delay in args.delays:
            rows.append((delay, "bss-sync", "push path", bench.bss_sync(delay)))
            print(f"  {delay} ms bss-sync: {rate(rows[-1][3]):,.0f}/s", flush=True)
            for task in tasks:
                for pool in pools:
                    rows.append((delay, f"celery {pool}", task, bench.celery(task, pool, delay)))
                    print(f"  {delay} ms celery {pool} {task}: {rate(rows[-1][3]):,.0f}/s",
                          flush=True)
    finally:
        bench.teardown()
    print(f"\n$ {command}")
    print(f"{'latency':>7}  {'system':<16} {'task':<10} {'setting':<22} {'records/s':>9} "
          f"{'done':>7} {'lost':>5}")
    for delay, system, task, r in rows:
        lost = str(args.records - r["done"]) if r["finished"] else "cap"
        print(f"{delay:>5}ms  {system:<16} {task:<10} {r['setting']:<22} {rate(r):>9,.0f} "
              f"{r['done']:>7,} {lost:>5}")
    for delay in args.delays:
        ours = next(rate(r) for d, s, _, r in rows if d == delay and s == "bss-sync")
        for task in tasks:
            best = max(((rate(r), s) for d, s, t, r in rows if d == delay and t == task),
                       default=(0.0, "-"))
            if best[0]:
                print(f"{delay} ms, {task}: bss-sync {ours:,.0f}/s = {ours / best[0]:.2f}x "
                      f"the best Celery pool ({best[1]}, {best[0]:,.0f}/s)")


if __name__ == "__main__":
    main()
