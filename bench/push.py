"""Push path: accounts created in the sandbox BSS until they exist in a third party,
with every real process in between.

    sandbox BSS ─outbox─▶ bss.events ─▶ dispatcher ─▶ sync.push ─▶ pusher ─▶ third party

Two throughput figures per pass, named for what they time; each counts only the
pusher's ``created`` audit rows (other outcomes are printed beside it, not counted):

* **drain** — N accounts (default 10,000) written to the sandbox BSS while the
  services are down (the events wait in ``dispatcher.events``); then the dispatcher
  and the pushers start (as processes, with their defaults but ``CONCURRENCY``), and
  the figure runs from the first account pushed to the last ``created`` row: what
  the push path can do with a queue full of work, start-up left out and the BSS's
  own write rate not in it.
* **end to end** — then, the services running and idle, N more accounts written to
  the BSS: from the first BSS write to the last ``created`` row. The BSS's write
  rate, its outbox relay and the dispatcher are in the figure: what a BSS writing
  at full speed sees.

A row's ``at`` is stamped when its outcome is known; it is committed within the audit
writer's batch interval after. Latency: then a few hundred accounts are written one
by one at a steady pace the path can follow, and p50/p99 of (pusher's audit row - the
BSS write) are printed.

CPU, per window (the drain's, the end-to-end's), counts only what the benchmark
started (``bench/harness.py``): its processes (dispatcher, pushers, sandbox BSS,
third-party stub; CPU and peak RSS from /proc), the PostgreSQL backends of its own
database (sampled every 0.25 s, by client; the server's WAL writer and checkpointer
are not counted) and RabbitMQ — a node of its own (``--broker own``, the default),
or with ``--broker shared`` (a vhost of ``AMQP_URL``'s node) every RabbitMQ node of
the machine, labelled "machine-wide": a vhost's share of a node's CPU is not
something RabbitMQ reports.

The third party is a local stub speaking the Acme CRM API (``bench/standin.py``,
``connectors/acme-crm.json``: a match GET, then a create POST per account),
answering in 0 ms, then, in a second pass with new accounts, in 50 ms. It is as
lean as it can be: in production the third party's CPU is not on this machine.
Two pushers at 0 ms (the pusher scales out: link claims keep concurrent pushers
from creating a record twice), one at 50 ms (that target is for one). A pusher
runs 64 handlers at 0 ms (the default) and 128 at 50 ms: there each record waits
~100 ms on the third party, and 64 handlers could not exceed ~600 records/s
whatever the CPU (Little's law); that is what ``CONCURRENCY`` is for.
Each pass is named by its options (``--pass delay=50,concurrency=128,pushers=1``; a
key left out takes its default for that delay: 64 handlers and two pushers at 0 ms,
128 and one otherwise), and each figure is printed beside the command that
reproduces it.

Scaling (``--scaling``): the same drain at 2,000, 10,000, 40,000 and 100,000 accounts
(or the sizes given), each in a database of its own, for the first pass only and
without the end-to-end and latency parts; a table of records/s and CPU per record
for each size shows whether the cost per record stays flat as the tables grow
(issue 13: it did not while PostgreSQL planned blind on never-analyzed tables).

Asserts nothing. Uses its own database and broker (node or vhost), removed at the end.

    .venv/bin/python bench/push.py [--records N] [--pass delay=0,concurrency=64,pushers=2]...
                                   [--broker own|shared] [--scaling [2000,10000,40000,100000]]
    .venv/bin/python bench/push.py [--records N] [--delays 0,50] [--concurrency 64,128]
                                   [--pushers 2,1]                  (the older spelling)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pika
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    BENCH_APP,
    BackendCpu,
    Broker,
    exit_on_sigterm,
    proc_stats,
)
from sandbox.server import SandboxServer, free_port  # noqa: E402
from sandbox.settings import SandboxSettings  # noqa: E402
from shared.bss import BssClient  # noqa: E402
from shared.messaging.topology import DISPATCHER, DISPATCHER_QUEUE, PUSHER  # noqa: E402

#: BSS writes in flight at once when the bench writes accounts (end to end: the BSS
#: users' side).
WRITERS = 32

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ORG = "bench"
INSTANCE = "bench-crm"
#: The pusher's outcome a figure counts: the accounts are new, each one is created.
SUCCESS = "created"
#: The third-party stub's process: the same work per record at any size, so its CPU per
#: record is the scaling table's control (it rises when the machine is slower).
STANDIN = "third-party"


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """CPU seconds so far of everything the run measures, and when."""

    cpu: dict[str, float]
    #: PostgreSQL's CPU by client (``application_name``) of the run's database
    clients: dict[str, float]
    commits: int
    time: float


@dataclasses.dataclass(frozen=True, slots=True)
class Figure:
    """One throughput figure: ``records`` created in ``seconds``, named for what it times."""

    name: str
    records: int
    seconds: float
    command: str

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


class Bench:
    def __init__(self, records: int, broker: str = "own") -> None:
        self.records = records
        stamp = f"{int(time.time())}_{uuid.uuid4().hex[:6]}"
        self.database = f"bss_sync_bench_{stamp}"
        self.tmp = Path(tempfile.mkdtemp(prefix="bss-sync-bench-"))
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.sandbox: SandboxServer | None = None
        self.broker = Broker(broker, stamp.replace("_", "-"))
        self.capacity = 0.0
        #: ms of CPU per record by process (the run's own), last drain
        self.cpu_per_record: dict[str, float] = {}
        #: every figure printed, in order (the summary at the end repeats them)
        self.figures: list[tuple[Pass, Figure]] = []
        base = DATABASE_URL.rsplit("/", 1)[0]
        self.database_url = f"{base}/{self.database}"
        self.backends = BackendCpu(self.database_url)

    # -- set-up / tear-down ------------------------------------------------------------

    def setup(self) -> None:
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        self.broker.start()
        for command in (["db", "upgrade"], ["topology", "declare"]):
            subprocess.run([sys.executable, "-m", "shared.cli.main", *command],
                           env=self.env(), check=True, stdout=subprocess.DEVNULL)
        self.backends.start()

    def teardown(self) -> None:
        self.backends.stopping.set()
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.sandbox is not None:
            self.sandbox.stop()
        self.broker.close()
        self.backends.join(5)
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "AMQP_URL": self.broker.amqp_url,
                "DATABASE_URL": self.database_url, "LOG_LEVEL": "WARNING",
                "LOG_FORMAT": "json", "BENCH_API_KEY": "bench-key", **extra}

    @contextlib.contextmanager
    def db(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection of the benchmark's own: its backend's CPU is not counted."""
        with psycopg.connect(self.database_url, autocommit=True,
                             application_name=BENCH_APP) as conn:
            yield conn

    def start(self, name: str, args: list[str], **env: str) -> None:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.processes[name] = subprocess.Popen([sys.executable, *args], env=self.env(**env),
                                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGTERM)
        process.wait(30)

    def start_stub(self, delay_ms: int) -> str:
        port = free_port()
        self.start(STANDIN, [str(ROOT / "bench" / "standin.py"), str(port),
                             "--delay", str(delay_ms)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/companies", timeout=1)
                return f"http://127.0.0.1:{port}"
            time.sleep(0.1)
        raise RuntimeError("the third-party stub did not start")

    def apply(self, server: str) -> None:
        installation = {
            "connectors": [{"id": "acme", "spec": str(ROOT / "connectors" / "acme-crm.json")}],
            "organizations": [{"id": ORG, "name": "Bench", "instances": [{
                "id": INSTANCE, "name": "Bench CRM", "connector": "acme", "server": server,
                "credentials": {"apiKey": "env:BENCH_API_KEY"},
                "permissions": {"account": {"push": ["create", "update"]}},
                # the stub has no limit: let the connector's not be the bottleneck
                "rateLimit": {"requests": 100000, "per": "1s", "concurrency": 512}}]}],
        }
        path = self.tmp / "installation.json"
        path.write_text(json.dumps(installation))
        subprocess.run([sys.executable, "-m", "shared.cli.main", "apply", str(path)],
                       env=self.env(), check=True, stdout=subprocess.DEVNULL)

    # -- one pass -----------------------------------------------------------------------

    async def create_accounts(self, base_url: str, count: int, tag: str) -> float:
        """``count`` accounts written to the BSS by ``WRITERS`` callers at once, through
        the services' own BSS client (keyed creates: a request resent on a fresh
        connection makes no second account). httpx's default client here took ~2.5 ms
        of the bench's CPU a write and bounded the end-to-end figure at ~220/s."""
        started = time.perf_counter()
        async with BssClient(base_url, batch_reads=False,
                             limits=httpx.Limits(max_connections=WRITERS)) as bss:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(count):
                queue.put_nowait(i)

            async def worker() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    await bss.create(ORG, "account", {
                        "name": f"Account {tag}-{i}", "code": f"{tag}-{i:06d}",
                        "type": "customer", "currency": "EUR", "industry": "Software",
                        "email": f"billing{i}@example.com", "numberOfEmployees": i % 500,
                        "addresses": [{"type": "billing", "isBilling": True,
                                       "line1": f"{i} Main Street", "city": "Paris",
                                       "postalCode": "75001", "countryCode": "FR"}]},
                        origin=None, idempotency_key=f"bench-{tag}-{i}")

            await asyncio.gather(*(worker() for _ in range(WRITERS)))
        return time.perf_counter() - started

    def pushed(self, conn: psycopg.Connection[Any], since: float) -> int:
        """Accounts the pusher created since ``since`` (cheap: the audit index on ``at``)."""
        row = conn.execute(
            "SELECT count(*) FROM audit_log WHERE at >= to_timestamp(%s)"
            " AND service = %s AND outcome = %s", (since, PUSHER, SUCCESS)).fetchone()
        return int(row[0]) if row else 0

    def other_outcomes(self, since: float) -> dict[str, int]:
        """The pusher's rows since ``since`` that are not a success (not counted)."""
        with self.db() as conn:
            rows = conn.execute(
                "SELECT outcome, count(*) FROM audit_log WHERE at >= to_timestamp(%s)"
                " AND service = %s AND outcome <> %s GROUP BY outcome",
                (since, PUSHER, SUCCESS)).fetchall()
        return {str(outcome): int(count) for outcome, count in rows}

    def dispatched(self, conn: psycopg.Connection[Any], since: float) -> int:
        """Events the dispatcher settled since ``since``."""
        row = conn.execute("SELECT count(*) FROM audit_log WHERE at >= to_timestamp(%s)"
                           " AND service = %s", (since, DISPATCHER)).fetchone()
        return int(row[0]) if row else 0

    def wait_pushed(self, since: float, count: int) -> float:
        """Until ``count`` accounts are pushed; returns when the last one was (its audit
        row's time, so how often this looks does not change the figure).

        The count scans the pass's audit rows, so it is not asked once a second: the
        next look is halfway to when the rate so far says the run ends (at least a
        second apart) — a dozen counts in a run of 100,000. A count a second cost
        PostgreSQL more the longer the run, inside the figures it measures (its CPU per
        record at 100,000: 0.229 ms with it, 0.215 without, one run each)."""
        deadline = time.monotonic() + max(600, count / 5)
        began = time.monotonic()
        with self.db() as conn:
            while (done := self.pushed(conn, since)) < count:
                now = time.monotonic()
                if now > deadline:
                    raise RuntimeError(f"only {done}/{count} pushed in time; other outcomes: "
                                       f"{self.other_outcomes(since)}")
                rate = done / max(now - began, 1e-3)
                time.sleep(max(1.0, (count - done) / rate / 2) if rate else 1.0)
            row = conn.execute(
                "SELECT extract(epoch FROM max(at)) FROM audit_log WHERE at >= to_timestamp(%s)"
                " AND service = %s AND outcome = %s", (since, PUSHER, SUCCESS)).fetchone()
        return float(row[0]) if row and row[0] is not None else time.time()

    def wait_events_queued(self, count: int) -> None:
        """Until the sandbox's outbox has published ``count`` events (services down)."""
        deadline = time.monotonic() + 300
        with self.db() as conn:
            while True:
                row = conn.execute("SELECT count(*) FROM sandbox.outbox"
                                   " WHERE published_at IS NULL").fetchone()
                if row and row[0] == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the sandbox did not publish its events in time")
                time.sleep(0.2)
        print(f"  {count} events waiting in {DISPATCHER_QUEUE} "
              f"(broker says {self.queued(DISPATCHER_QUEUE)})")

    def queued(self, queue: str) -> int:
        """Messages ready in ``queue`` (a passive declare: any broker, no management API)."""
        connection = pika.BlockingConnection(pika.URLParameters(self.broker.amqp_url))
        try:
            return int(connection.channel().queue_declare(queue, passive=True)
                       .method.message_count)
        finally:
            connection.close()

    def latencies(self, since: float) -> list[float]:
        with self.db() as conn:
            rows = conn.execute(
                "SELECT extract(epoch FROM a.at - (r.data->>'createdAt')::timestamptz)"
                "  FROM audit_log a JOIN sandbox.records r ON r.id = a.record_id"
                " WHERE a.at >= to_timestamp(%s) AND a.service = %s"
                "   AND a.outcome = %s ORDER BY 1", (since, PUSHER, SUCCESS)).fetchall()
        return [float(r[0]) for r in rows]

    def start_services(self, concurrency: int, pushers: int) -> None:
        assert self.sandbox is not None
        self.start(DISPATCHER, ["-m", "services.dispatcher"])
        for n in range(pushers):
            self.start(PUSHER if n == 0 else f"{PUSHER}-{n + 1}", ["-m", "services.pusher"],
                       BSS_API_URL=self.sandbox.url, CONCURRENCY=str(concurrency))

    def commits(self) -> int:
        with self.db() as conn:
            row = conn.execute("SELECT xact_commit FROM pg_stat_database"
                               " WHERE datname = current_database()").fetchone()
        return int(row[0]) if row else 0

    def snapshot(self) -> Snapshot:
        """CPU seconds so far of everything the run started, plus commits and the time."""
        values = {name: proc_stats(p.pid)[0] for name, p in self.processes.items()}
        if self.sandbox is not None and self.sandbox.pid:
            values["sandbox"] = proc_stats(self.sandbox.pid)[0]
        values["PostgreSQL"] = self.backends.total()
        values[self.broker.label()] = self.broker.stats()[0]
        return Snapshot(values, self.backends.by_client(), self.commits(), time.time())

    def settled_snapshot(self) -> Snapshot:
        """A snapshot once the backend sampler has caught up (two of its intervals)."""
        time.sleep(2 * self.backends.interval)
        return self.snapshot()

    def peak(self, name: str) -> str:
        """Peak RSS of ``name``, or what it is when it has none of its own."""
        if name in self.processes:
            return f"{proc_stats(self.processes[name].pid)[1] / 1e6:.0f} MB"
        if name == "sandbox" and self.sandbox is not None and self.sandbox.pid:
            return f"{proc_stats(self.sandbox.pid)[1] / 1e6:.0f} MB"
        if name == self.broker.label() and self.broker.node is not None:
            return f"{self.broker.stats()[1] / 1e6:.0f} MB"
        return "(server)"

    def cpu_table(self, first: Snapshot, last: Snapshot, done: int,
                  window: str) -> dict[str, float]:
        """Per process, CPU over the window between the snapshots; ms CPU per record."""
        elapsed = max(last.time - first.time, 1e-9)
        width = max(12, *(len(name) for name in last.cpu))
        print(f"  {'process':<{width}} {'CPU s':>8} {'CPU %':>7} {'ms CPU/record':>14} "
              f"{'peak RSS':>10}   (over {window}: the {elapsed:.1f} s between the readings, "
              "the last once the last row was seen)")
        per_record: dict[str, float] = {}
        for name, value in last.cpu.items():
            cpu = value - first.cpu.get(name, 0.0)
            per_record[name] = cpu / max(done, 1) * 1000
            print(f"  {name:<{width}} {cpu:>8.2f} {cpu / elapsed * 100:>6.0f}% "
                  f"{per_record[name]:>14.3f} {self.peak(name):>10}")
        total = sum(per_record.values())
        print(f"  {'all of them':<{width}} {total * done / 1000:>8.2f} "
              f"{total * done / 1000 / elapsed * 100:>6.0f}% {total:>14.3f}")
        clients = {name: cpu - first.clients.get(name, 0.0)
                   for name, cpu in last.clients.items()}
        print("  PostgreSQL's CPU by client, ms per record: " + ", ".join(
            f"{client or '?'} {cpu / max(done, 1) * 1000:.3f}"
            for client, cpu in sorted(clients.items(), key=lambda c: -c[1])))
        return per_record

    def measure_drain(self, setting: Pass) -> Figure:
        """Start the services on a full queue; measure once they push (warm)."""
        started, commits_before = time.time(), self.commits()
        self.start_services(setting.concurrency, setting.pushers)
        with self.db() as conn:
            # The dispatcher is done before the pushers are warm: its CPU per event is
            # measured from its first audit row to its last (start-up left out).
            while (dispatched := self.dispatched(conn, started)) == 0:
                time.sleep(0.01)
            dispatcher_first = proc_stats(self.processes[DISPATCHER].pid)[0], dispatched
            while self.pushed(conn, started) == 0:
                time.sleep(0.05)
            first = self.snapshot()
            first_count = self.pushed(conn, started)
        finished = self.wait_pushed(started, self.records)
        last = self.settled_snapshot()
        with self.db() as conn:
            dispatched = self.dispatched(conn, started) - dispatcher_first[1]
        done = self.records - first_count
        figure = Figure("drain", done, finished - first.time, self.command(setting))
        print(f"cold start: {first.time - started:.1f} s from launching the services to "
              "the first account pushed")
        self.print_figure(figure, "events preloaded while the services were down, from the "
                          f"first account pushed to the last {SUCCESS} audit row",
                          self.other_outcomes(started))
        self.cpu_per_record = self.cpu_table(first, last, done, "the drain")
        dispatcher_cpu = last.cpu[DISPATCHER] - dispatcher_first[0]
        print(f"  dispatcher, from its first audit row to its last: "
              f"{dispatcher_cpu / max(dispatched, 1) * 1000:.3f} ms CPU per event "
              f"({dispatched} events; {last.cpu[DISPATCHER]:.2f} s CPU in all, start-up "
              "included)")
        commits = last.commits - first.commits
        print(f"  PostgreSQL transactions committed: {commits / max(done, 1):.1f} per record "
              f"({(last.commits - commits_before) / self.records:.2f} from the services' "
              "start, dispatching included)")
        self.capacity = figure.rate
        return figure

    def measure_end_to_end(self, setting: Pass, tag: str) -> Figure:
        """The services running and idle: N accounts written to the BSS, from the first
        write to the last account created in the third party."""
        first = self.settled_snapshot()
        assert self.sandbox is not None
        writing = asyncio.run(self.create_accounts(self.sandbox.url, self.records, tag))
        finished = self.wait_pushed(first.time, self.records)
        last = self.settled_snapshot()
        figure = Figure("end to end", self.records, finished - first.time,
                        self.command(setting))
        self.print_figure(figure, "accounts written to the BSS while the services ran, from "
                          f"the first BSS write to the last {SUCCESS} audit row; the BSS "
                          f"took the writes in {writing:.1f} s = "
                          f"{self.records / writing:,.0f} writes/s",
                          self.other_outcomes(first.time))
        self.cpu_table(first, last, self.records, "end to end")
        return figure

    def print_figure(self, figure: Figure, what: str, others: dict[str, int]) -> None:
        print(f"{figure.name}: {figure.rate:,.0f} records/s ({figure.records} {SUCCESS} in "
              f"{figure.seconds:.2f} s; {what})"
              + (f"; other pusher rows, not counted: {others}" if others else ""))
        print(f"  $ {figure.command}")

    def command(self, setting: Pass) -> str:
        return reproduce(self.records, setting, self.broker.kind)

    def run_pass(self, setting: Pass, tag: str, *, full: bool = True) -> None:
        """The drain; with ``full``, the end to end and the latency too."""
        stub = self.start_stub(setting.delay)
        self.apply(stub)
        print(f"\n== third party answering in {setting.delay} ms; {setting.pushers} "
              f"pusher(s), CONCURRENCY={setting.concurrency} handlers each ==")
        print(f"  $ {self.command(setting)}")
        assert self.sandbox is not None
        seconds = asyncio.run(self.create_accounts(self.sandbox.url, self.records, tag))
        print(f"  the BSS accepted {self.records} writes in {seconds:.1f} s (services down)")
        self.wait_events_queued(self.records)
        self.figures.append((setting, self.measure_drain(setting)))
        if full:
            self.figures.append((setting, self.measure_end_to_end(setting, f"{tag}e")))
            self.measure_latency(tag)
        for name in list(self.processes):
            self.stop(name)

    def measure_latency(self, tag: str) -> None:
        """Records written one by one at a steady pace the path can follow."""
        assert self.sandbox is not None
        rate = max(10, min(100, int(self.capacity / 2)))
        count = max(100, min(1000, self.records // 10))
        since = time.time()
        asyncio.run(self.create_at_rate(self.sandbox.url, count, rate, f"{tag}l"))
        self.wait_pushed(since, count)
        values = self.latencies(since)
        print(f"latency at a steady {rate} writes/s ({count} accounts), BSS write → audit row: "
              f"p50 {_pct(values, 50) * 1000:,.0f} ms, p99 {_pct(values, 99) * 1000:,.0f} ms, "
              f"max {values[-1] * 1000:,.0f} ms")

    async def create_at_rate(self, base_url: str, count: int, rate: int, tag: str) -> None:
        async with BssClient(base_url, batch_reads=False) as bss:
            started = time.perf_counter()
            pending = []
            for i in range(count):
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                pending.append(asyncio.create_task(bss.create(
                    ORG, "account", {"name": f"Account {tag}-{i}", "code": f"{tag}-{i:06d}",
                                     "type": "customer", "currency": "EUR"},
                    origin=None, idempotency_key=f"bench-{tag}-{i}")))
            await asyncio.gather(*pending)


def _pct(values: list[float], percentile: int) -> float:
    index = min(len(values) - 1, max(0, round(percentile / 100 * len(values)) - 1))
    return values[index]


@dataclasses.dataclass(frozen=True, slots=True)
class Pass:
    """One pass: the third party's latency, and the pushers that drain it."""

    delay: int
    concurrency: int
    pushers: int

    @classmethod
    def for_delay(cls, delay: int, *, concurrency: int | None = None,
                  pushers: int | None = None) -> Pass:
        """The pass at ``delay`` ms; what is not given takes its default for that delay:
        64 handlers (the runtime's default) and two pushers at 0 ms; 128 and one beyond,
        where each record waits on the third party and 64 would cap the throughput."""
        return cls(delay, concurrency if concurrency is not None else (64 if delay == 0 else 128),
                   pushers if pushers is not None else (2 if delay == 0 else 1))

    def option(self) -> str:
        return f"--pass delay={self.delay},concurrency={self.concurrency},pushers={self.pushers}"


PASS_KEYS = ("delay", "concurrency", "pushers")
DEFAULT_SCALING = "2000,10000,40000,100000"


def parse_pass(text: str) -> Pass:
    """``delay=50,concurrency=128,pushers=1`` (``delay`` required) as a :class:`Pass`."""
    values: dict[str, int] = {}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or key not in PASS_KEYS:
            raise argparse.ArgumentTypeError(
                f"--pass {text!r}: {pair!r} is not one of {'=…, '.join(PASS_KEYS)}=…")
        if key in values:
            raise argparse.ArgumentTypeError(f"--pass {text!r}: {key} is given twice")
        try:
            values[key] = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--pass {text!r}: {key} must be a whole number, not {value!r}") from None
        if values[key] < (0 if key == "delay" else 1):
            raise argparse.ArgumentTypeError(f"--pass {text!r}: {key} is too small")
    if "delay" not in values:
        raise argparse.ArgumentTypeError(f"--pass {text!r}: delay=… is required")
    return Pass.for_delay(values["delay"], concurrency=values.get("concurrency"),
                          pushers=values.get("pushers"))


def parse_sizes(text: str) -> list[int]:
    """``2000,10000`` as record counts (each at least 100)."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--scaling {text!r}: record counts separated by commas, e.g. 2000,10000") from None
    if not sizes or min(sizes) < 100:
        raise argparse.ArgumentTypeError(f"--scaling {text!r}: each size is at least 100")
    return sizes


def legacy_passes(delays: str, concurrency: str | None, pushers: str | None) -> list[Pass]:
    """``--delays`` with ``--concurrency`` / ``--pushers`` by position; a pass without
    a value of its own takes its delay's default (not the previous pass's value)."""
    def listed(text: str | None) -> list[int]:
        return [int(v) for v in text.split(",")] if text else []

    handlers, processes = listed(concurrency), listed(pushers)
    return [Pass.for_delay(delay, concurrency=handlers[i] if i < len(handlers) else None,
                           pushers=processes[i] if i < len(processes) else None)
            for i, delay in enumerate(listed(delays))]


def reproduce(records: int, setting: Pass, broker: str) -> str:
    """The command that runs ``setting`` again on ``records`` accounts."""
    return shlex.join([".venv/bin/python", "bench/push.py", "--records", str(records),
                       *setting.option().split(" "), "--broker", broker])


def run(records: int, passes: list[Pass], *, broker: str = "own", full: bool = True) -> Bench:
    """Every pass on ``records`` accounts, in a database and broker of their own."""
    bench = Bench(records, broker)
    try:
        bench.setup()
        settings = SandboxSettings.from_env(database_url=bench.database_url,
                                            amqp_url=bench.broker.amqp_url)
        bench.sandbox = SandboxServer(settings).start()
        for index, setting in enumerate(passes):
            bench.run_pass(setting, f"p{index}", full=full)
    finally:
        bench.teardown()
        print(f"\nlogs: {bench.tmp}")
    return bench


def summary(figures: list[tuple[Pass, Figure]]) -> list[str]:
    """One line a figure: the pass, the figure by its name, the command."""
    return [f"delay={setting.delay} ms, {setting.pushers} pusher(s) x {setting.concurrency}: "
            f"{figure.name} {figure.rate:,.0f} records/s ({figure.records} {SUCCESS}, "
            f"{figure.seconds:.2f} s)   $ {figure.command}" for setting, figure in figures]


def scaling(sizes: list[int], setting: Pass, broker: str, rounds: int = 1) -> None:
    """The drain at each size, ``rounds`` times over (the sizes in turn, so a noisy
    stretch of the machine hits each alike); then one table, and the command that
    reproduces it."""
    rows: list[ScalingRow] = []
    try:
        for round_ in range(1, rounds + 1):
            for size in sizes:
                print(f"\n######## scaling: {size:,} accounts"
                      + (f", round {round_} of {rounds}" if rounds > 1 else "") + " ########",
                      flush=True)
                bench = run(size, [setting], broker=broker, full=False)
                rows.append(ScalingRow(size, bench.capacity, dict(bench.cpu_per_record)))
    except KeyboardInterrupt:
        print(f"\ninterrupted: the runs measured so far ({len(rows)} of "
              f"{len(sizes) * rounds})")
        if not rows:
            return
    command = (f"$ .venv/bin/python bench/push.py --scaling {','.join(str(s) for s in sizes)} "
               f"{setting.option()} --broker {broker}"
               + (f" --rounds {rounds}" if rounds > 1 else ""))
    print(f"\n== scaling: third party at {setting.delay} ms, {setting.pushers} pusher(s), "
          f"CONCURRENCY={setting.concurrency} ==")
    print("\n".join([command, *scaling_report(rows, broker)]))


@dataclasses.dataclass(frozen=True)
class ScalingRow:
    """One drain of ``size`` accounts: records/s, and ms CPU per record by process."""

    size: int
    rate: float
    cpu: dict[str, float]


def scaling_report(rows: list[ScalingRow], broker: str = "own") -> list[str]:
    """The table of every run, then each size's median against the median at 10,000
    (else at the first size measured), with the control: the third-party stub's CPU
    per record, which rises with the machine's slowness and not with the data."""
    names = sorted({name for row in rows for name in row.cpu},
                   key=lambda n: (n.startswith(("PostgreSQL", "RabbitMQ")), n))
    lines = ["drain records/s; ms CPU per record by process (PostgreSQL: the run's database's "
             "backends; " + ("RabbitMQ: the run's own node)" if broker == "own"
                             else "RabbitMQ: every node of the machine)"),
             f"{'records':>8} {'drain/s':>10} "
             + " ".join(f"{n:>{max(11, len(n))}}" for n in names) + f" {'all':>7}"]
    for row in rows:
        lines.append(f"{row.size:>8,} {row.rate:>10,.0f} "
                     + " ".join(f"{row.cpu.get(n, 0):>{max(11, len(n))}.3f}" for n in names)
                     + f" {sum(row.cpu.values()):>7.3f}")
    sizes = list(dict.fromkeys(row.size for row in rows))
    rate = {size: statistics.median(r.rate for r in rows if r.size == size) for size in sizes}
    cpu = {size: statistics.median(sum(r.cpu.values()) for r in rows if r.size == size)
           for size in sizes}
    base = 10_000 if 10_000 in rate else sizes[0]
    runs = {size: sum(r.size == size for r in rows) for size in sizes}
    control = {size: statistics.median(r.cpu.get(STANDIN, 0.0) for r in rows if r.size == size)
               for size in sizes}
    for size in sizes:
        median = "median of " if runs[size] > 1 else ""
        line = (f"  {size:,}: {median}{runs[size]} run(s): {rate[size]:,.0f} records/s, "
                f"{rate[size] / rate[base] * 100 - 100:+.0f} % against {base:,}; "
                f"{cpu[size]:.3f} ms CPU per record in all, "
                f"{cpu[size] / cpu[base] * 100 - 100:+.0f} %")
        if control[base]:
            line += (f"; control ({STANDIN}, the same work per record at any size): "
                     f"{control[size] / control[base] * 100 - 100:+.0f} %")
        lines.append(line)
    return lines


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--pass", dest="passes", action="append", type=parse_pass,
                        metavar="delay=MS[,concurrency=N][,pushers=N]",
                        help="one pass, repeatable (default: delay=0 then delay=50)")
    parser.add_argument("--broker", choices=("own", "shared"), default="own",
                        help="a RabbitMQ node of the benchmark's own (default: its CPU is "
                             "the run's), or a vhost of AMQP_URL's node (CPU machine-wide)")
    parser.add_argument("--scaling", nargs="?", const=DEFAULT_SCALING, type=parse_sizes,
                        metavar="N,N,…", help="the first pass's drain at each size "
                        f"(default sizes: {DEFAULT_SCALING})")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with --scaling: every size this many times, in turn; each "
                        "size's median is compared (a short drain is at the mercy of a "
                        "noisy moment)")
    parser.add_argument("--delays", help="third-party latencies in ms (older spelling)")
    parser.add_argument("--concurrency",
                        help="the pusher's CONCURRENCY for each delay, by position")
    parser.add_argument("--pushers", help="pusher processes for each delay, by position")
    args = parser.parse_args()
    if args.passes and (args.delays or args.concurrency or args.pushers):
        parser.error("give the passes as --pass delay=…,concurrency=…,pushers=… "
                     "or with --delays, not both")
    try:
        passes = args.passes or legacy_passes(args.delays or "0,50", args.concurrency,
                                               args.pushers)
    except ValueError:
        parser.error("--delays, --concurrency and --pushers take whole numbers separated "
                     "by commas")
    if args.rounds < 1:
        parser.error("--rounds takes a whole number of at least 1")
    if args.rounds > 1 and not args.scaling:
        parser.error("--rounds goes with --scaling (the sizes it runs in turn)")
    if args.scaling:
        scaling(args.scaling, passes[0], args.broker, args.rounds)
        return
    bench = run(args.records, passes, broker=args.broker)
    print(f"\n== figures: only the pusher's {SUCCESS} audit rows count ==")
    print("\n".join(summary(bench.figures)))


if __name__ == "__main__":
    main()
