"""Push path, end to end: accounts created in the sandbox BSS until they exist in a
third party, with every real process in between.

    sandbox BSS ─outbox─▶ bss.events ─▶ dispatcher ─▶ sync.push ─▶ pusher ─▶ third party

Throughput: N accounts (default 10,000) are written to the sandbox BSS while the
services are down (the events wait in ``dispatcher.events``); then the dispatcher and
the pushers start (as processes, with their defaults but ``CONCURRENCY``) and the
time until the last account is in the third party and the audit log gives records/s
end to end — what the push path can do, not how fast the sandbox accepts writes.
Latency: then a few hundred accounts are written one by one at a steady pace the
path can follow, and p50/p99 of (pusher's audit row - the BSS write) are printed.
CPU seconds and peak RSS per process are read from /proc.

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
128 and one otherwise), and prints the command that reproduces it.

Scaling (``--scaling``): the same drain at 2,000, 10,000, 40,000 and 100,000 accounts
(or the sizes given), each in a database of its own, for the first pass only and
without the latency part; a table of records/s and CPU per record for each size
shows whether the cost per record stays flat as the tables grow (issue 13: it did
not while PostgreSQL planned blind on never-analyzed tables).

Asserts nothing. Uses its own database and vhost, dropped at the end.

    .venv/bin/python bench/push.py [--records N] [--pass delay=0,concurrency=64,pushers=2]...
                                   [--scaling [2000,10000,40000,100000]]
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
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sandbox.server import SandboxServer, free_port  # noqa: E402
from sandbox.settings import SandboxSettings  # noqa: E402
from shared.messaging.management import AmqpUrl, ManagementClient  # noqa: E402
from shared.messaging.topology import DISPATCHER, DISPATCHER_QUEUE, PUSHER  # noqa: E402

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ORG = "bench"
INSTANCE = "bench-crm"

def proc_stats(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system, children included) and peak RSS in bytes."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / ticks
        peak = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
        return cpu, peak
    except (FileNotFoundError, ProcessLookupError):
        return 0.0, 0


def cpu_by_command(names: tuple[str, ...] = ("postgres", "beam.smp")) -> dict[str, float]:
    """CPU seconds used so far by every process whose command is one of ``names``
    (the PostgreSQL backends, RabbitMQ), summed per command."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals = dict.fromkeys(names, 0.0)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        command = text[text.index("(") + 1:text.rindex(")")]
        if command in totals:
            fields = text.rsplit(")", 1)[1].split()
            totals[command] += (int(fields[11]) + int(fields[12])) / ticks
    return totals


class Bench:
    def __init__(self, records: int) -> None:
        self.records = records
        stamp = f"{int(time.time())}_{uuid.uuid4().hex[:6]}"
        self.database = f"bss_sync_bench_{stamp}"
        self.vhost = f"bss-sync-bench-{stamp}"
        self.tmp = Path(tempfile.mkdtemp(prefix="bss-sync-bench-"))
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.sandbox: SandboxServer | None = None
        self.management = ManagementClient.for_amqp_url(AMQP_URL)
        self.capacity = 0.0
        #: ms of CPU per record by process (PostgreSQL and RabbitMQ: machine-wide), last drain
        self.cpu_per_record: dict[str, float] = {}
        base = DATABASE_URL.rsplit("/", 1)[0]
        self.database_url = f"{base}/{self.database}"
        self.amqp_url = AmqpUrl.parse(AMQP_URL).with_vhost(self.vhost)

    # -- set-up / tear-down ------------------------------------------------------------

    def setup(self) -> None:
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        self.management.create_vhost(self.vhost)
        env = self.env()
        subprocess.run([sys.executable, "-m", "shared.cli.main", "db", "upgrade"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-m", "shared.cli.main", "topology", "declare"],
                       env=env, check=True, stdout=subprocess.DEVNULL)

    def teardown(self) -> None:
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
        with contextlib.suppress(Exception):
            self.management.delete_vhost(self.vhost)
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "AMQP_URL": self.amqp_url, "DATABASE_URL": self.database_url,
                "LOG_LEVEL": "WARNING", "LOG_FORMAT": "json", "BENCH_API_KEY": "bench-key",
                **extra}

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
        self.start("third-party", [str(ROOT / "bench" / "standin.py"), str(port),
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
        started = time.perf_counter()
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(count):
                queue.put_nowait(i)

            async def worker() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    await _post(client, f"/organizations/{ORG}/account", {
                        "name": f"Account {tag}-{i}", "code": f"{tag}-{i:06d}",
                        "type": "customer", "currency": "EUR", "industry": "Software",
                        "email": f"billing{i}@example.com", "numberOfEmployees": i % 500,
                        "addresses": [{"type": "billing", "isBilling": True,
                                       "line1": f"{i} Main Street", "city": "Paris",
                                       "postalCode": "75001", "countryCode": "FR"}]})

            await asyncio.gather(*(worker() for _ in range(32)))
        return time.perf_counter() - started

    def pushed(self, conn: psycopg.Connection[Any], since: float) -> int:
        """Accounts the pusher created since ``since`` (cheap: the audit index on ``at``)."""
        row = conn.execute(
            "SELECT count(*) FROM audit_log WHERE at >= to_timestamp(%s)"
            " AND service = %s AND outcome = 'created'", (since, PUSHER)).fetchone()
        return int(row[0]) if row else 0

    def dispatched(self, conn: psycopg.Connection[Any], since: float) -> int:
        """Events the dispatcher settled since ``since``."""
        row = conn.execute("SELECT count(*) FROM audit_log WHERE at >= to_timestamp(%s)"
                           " AND service = %s", (since, DISPATCHER)).fetchone()
        return int(row[0]) if row else 0

    def wait_pushed(self, since: float, count: int) -> float:
        """Until ``count`` accounts are pushed; returns when the last one was (its audit
        row's time). Polls once a second: the count scans the pass's audit rows, and
        polling faster would add the benchmark's own queries to PostgreSQL's load."""
        deadline = time.monotonic() + max(600, count / 5)
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while (done := self.pushed(conn, since)) < count:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {done}/{count} pushed in time")
                time.sleep(1.0)
            row = conn.execute(
                "SELECT extract(epoch FROM max(at)) FROM audit_log WHERE at >= to_timestamp(%s)"
                " AND service = %s AND outcome = 'created'", (since, PUSHER)).fetchone()
        return float(row[0]) if row and row[0] is not None else time.time()

    def wait_events_queued(self, count: int) -> None:
        """Until the sandbox's outbox has published ``count`` events (services down)."""
        deadline = time.monotonic() + 300
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while True:
                row = conn.execute("SELECT count(*) FROM sandbox.outbox"
                                   " WHERE published_at IS NULL").fetchone()
                if row and row[0] == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the sandbox did not publish its events in time")
                time.sleep(0.2)
        queue = self.management.for_vhost(self.vhost).queue(DISPATCHER_QUEUE) or {}
        print(f"  {count} events waiting in {DISPATCHER_QUEUE} "
              f"(broker says {queue.get('messages', '?')})")

    def latencies(self, since: float) -> list[float]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT extract(epoch FROM a.at - (r.data->>'createdAt')::timestamptz)"
                "  FROM audit_log a JOIN sandbox.records r ON r.id = a.record_id"
                " WHERE a.at >= to_timestamp(%s) AND a.service = %s"
                "   AND a.outcome = 'created' ORDER BY 1", (since, PUSHER)).fetchall()
        return [float(r[0]) for r in rows]

    def start_services(self, concurrency: int, pushers: int) -> None:
        self.start(DISPATCHER, ["-m", "services.dispatcher"])
        for n in range(pushers):
            self.start(PUSHER if n == 0 else f"{PUSHER}-{n + 1}", ["-m", "services.pusher"],
                       BSS_API_URL=self.sandbox.url, CONCURRENCY=str(concurrency))

    def commits(self) -> int:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute("SELECT xact_commit FROM pg_stat_database"
                               " WHERE datname = current_database()").fetchone()
        return int(row[0]) if row else 0

    def snapshot(self) -> dict[str, float]:
        """CPU seconds so far of every process we measure, plus commits and the time."""
        values = {name: proc_stats(p.pid)[0] for name, p in self.processes.items()}
        if self.sandbox is not None and self.sandbox.pid:
            values["sandbox"] = proc_stats(self.sandbox.pid)[0]
        values.update(cpu_by_command())
        values["commits"] = float(self.commits())
        values["time"] = time.time()
        return values

    def measure_drain(self, concurrency: int, pushers: int) -> None:
        """Start the services on a full queue; measure once they push (warm)."""
        started, commits_before = time.time(), self.commits()
        self.start_services(concurrency, pushers)
        with psycopg.connect(self.database_url, autocommit=True) as conn:
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
        last = self.snapshot()  # CPU: the idle second after the last push adds ~nothing
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            dispatched = self.dispatched(conn, started) - dispatcher_first[1]
        elapsed = finished - first["time"]
        done = self.records - first_count
        print(f"cold start: {first['time'] - started:.1f} s from launching the services to "
              "the first account pushed")
        print(f"throughput: {done / elapsed:,.0f} records/s end to end ({done} accounts from "
              f"the events queue to the third party and the audit log in {elapsed:.1f} s)")
        print(f"{'process':<12} {'CPU s':>8} {'CPU %':>7} {'ms CPU/record':>14} {'peak RSS':>10}"
              "   (CPU % over the drain)")
        labels = {"postgres": "PostgreSQL", "beam.smp": "RabbitMQ"}
        self.cpu_per_record = {}
        for name, value in last.items():
            if name in ("commits", "time"):
                continue
            cpu = value - first[name]
            self.cpu_per_record[labels.get(name, name)] = cpu / done * 1000
            pid = (self.processes[name].pid if name in self.processes
                   else self.sandbox.pid if name == "sandbox" and self.sandbox else None)
            peak = f"{proc_stats(pid)[1] / 1e6:>8.0f} MB" if pid else "  (server)"
            print(f"{labels.get(name, name):<12} {cpu:>8.1f} {cpu / elapsed * 100:>6.0f}% "
                  f"{cpu / done * 1000:>14.2f} {peak:>10}")
        dispatcher_cpu = last[DISPATCHER] - dispatcher_first[0]
        print(f"dispatcher, from its first audit row to its last: "
              f"{dispatcher_cpu / max(dispatched, 1) * 1000:.3f} ms CPU per event "
              f"({dispatched} events; {last[DISPATCHER]:.2f} s CPU in all, start-up included)")
        commits = last["commits"] - first["commits"]
        print(f"PostgreSQL transactions committed: {commits / done:.1f} per record "
              f"({(last['commits'] - commits_before) / self.records:.2f} from the services' "
              "start, dispatching included)")
        self.capacity = done / elapsed

    def run_pass(self, setting: Pass, tag: str, *, latency: bool = True) -> None:
        delay_ms, concurrency, pushers = setting.delay, setting.concurrency, setting.pushers
        stub = self.start_stub(delay_ms)
        self.apply(stub)
        print(f"\n== third party answering in {delay_ms} ms; {pushers} pusher(s), "
              f"CONCURRENCY={concurrency} handlers each ==")
        print(f"  reproduce: .venv/bin/python bench/push.py --records {self.records} "
              f"{setting.option()}")
        # Throughput: N accounts written while the services are down, then drained.
        seconds = asyncio.run(self.create_accounts(self.sandbox.url, self.records, tag))
        print(f"  the BSS accepted {self.records} writes in {seconds:.1f} s")
        self.wait_events_queued(self.records)
        self.measure_drain(concurrency, pushers)
        if latency:
            self.measure_latency(tag)
        for name in [n for n in self.processes if n != "sandbox"]:
            self.stop(name)

    def measure_latency(self, tag: str) -> None:
        """Records written one by one at a steady pace the path can follow."""
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
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            started = time.perf_counter()
            pending = []
            for i in range(count):
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                pending.append(asyncio.create_task(_post(
                    client, f"/organizations/{ORG}/account",
                    {"name": f"Account {tag}-{i}", "code": f"{tag}-{i:06d}",
                     "type": "customer", "currency": "EUR"})))
            await asyncio.gather(*pending)


async def _post(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST, retried on a connection the server closed meanwhile (keep-alive race)."""
    for attempt in range(3):
        try:
            response = await client.post(path, json=body)
            response.raise_for_status()
            return response
        except httpx.TransportError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


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


def run(records: int, passes: list[Pass], *, latency: bool = True) -> Bench:
    """Every pass on ``records`` accounts, in a database and vhost of their own."""
    bench = Bench(records)
    try:
        bench.setup()
        settings = SandboxSettings.from_env(database_url=bench.database_url,
                                            amqp_url=bench.amqp_url)
        bench.sandbox = SandboxServer(settings).start()
        for index, setting in enumerate(passes):
            bench.run_pass(setting, f"p{index}", latency=latency)
    finally:
        bench.teardown()
        print(f"\nlogs: {bench.tmp}")
    return bench


def scaling(sizes: list[int], setting: Pass) -> None:
    """The drain at each size; then one table, and the command that reproduces it."""
    rows = []
    try:
        for size in sizes:
            print(f"\n######## scaling: {size:,} accounts ########", flush=True)
            bench = run(size, [setting], latency=False)
            rows.append((size, bench.capacity, dict(bench.cpu_per_record)))
    except KeyboardInterrupt:
        print(f"\ninterrupted: the sizes measured so far ({len(rows)} of {len(sizes)})")
        sizes = [size for size, _, _ in rows]
        if not rows:
            return
    names = sorted({name for _, _, cpu in rows for name in cpu},
                   key=lambda n: (n in ("PostgreSQL", "RabbitMQ"), n))
    print(f"\n== scaling: third party at {setting.delay} ms, {setting.pushers} pusher(s), "
          f"CONCURRENCY={setting.concurrency} ==")
    print(f"reproduce: .venv/bin/python bench/push.py --scaling "
          f"{','.join(str(s) for s in sizes)} {setting.option()}")
    print("ms CPU per record by process (PostgreSQL and RabbitMQ: every such process on the "
          "machine)")
    print(f"{'records':>8} {'records/s':>10} " + " ".join(f"{n:>11}" for n in names)
          + f" {'all':>7}")
    for size, rate, cpu in rows:
        print(f"{size:>8,} {rate:>10,.0f} " + " ".join(f"{cpu.get(n, 0):>11.3f}" for n in names)
              + f" {sum(cpu.values()):>7.3f}")
    base = next((rate for size, rate, _ in rows if size == 10_000), rows[0][1])
    for size, rate, _ in rows:
        print(f"  {size:,}: {rate / base * 100 - 100:+.0f} % records/s against "
              f"{'10,000' if any(s == 10_000 for s in sizes) else f'{sizes[0]:,}'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--pass", dest="passes", action="append", type=parse_pass,
                        metavar="delay=MS[,concurrency=N][,pushers=N]",
                        help="one pass, repeatable (default: delay=0 then delay=50)")
    parser.add_argument("--scaling", nargs="?", const=DEFAULT_SCALING, type=parse_sizes,
                        metavar="N,N,…", help="the first pass's drain at each size "
                        f"(default sizes: {DEFAULT_SCALING})")
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
    if args.scaling:
        scaling(args.scaling, passes[0])
    else:
        run(args.records, passes)


if __name__ == "__main__":
    main()
