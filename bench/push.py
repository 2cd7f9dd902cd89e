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
Asserts nothing. Uses its own database and vhost, dropped at the end.

    .venv/bin/python bench/push.py [--records N] [--delays 0,50] [--concurrency 64,128]
                                   [--pushers 2,1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
        for name, value in last.items():
            if name in ("commits", "time"):
                continue
            cpu = value - first[name]
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

    def run_pass(self, delay_ms: int, tag: str, concurrency: int, pushers: int) -> None:
        stub = self.start_stub(delay_ms)
        self.apply(stub)
        print(f"\n== third party answering in {delay_ms} ms; {pushers} pusher(s), "
              f"CONCURRENCY={concurrency} handlers each ==")
        # Throughput: N accounts written while the services are down, then drained.
        seconds = asyncio.run(self.create_accounts(self.sandbox.url, self.records, tag))
        print(f"  the BSS accepted {self.records} writes in {seconds:.1f} s")
        self.wait_events_queued(self.records)
        self.measure_drain(concurrency, pushers)
        # Latency: records written one by one at a steady pace the path can follow.
        rate = max(10, min(100, int(self.capacity / 2)))
        count = max(100, min(1000, self.records // 10))
        since = time.time()
        asyncio.run(self.create_at_rate(self.sandbox.url, count, rate, f"{tag}l"))
        self.wait_pushed(since, count)
        values = self.latencies(since)
        print(f"latency at a steady {rate} writes/s ({count} accounts), BSS write → audit row: "
              f"p50 {_pct(values, 50) * 1000:,.0f} ms, p99 {_pct(values, 99) * 1000:,.0f} ms, "
              f"max {values[-1] * 1000:,.0f} ms")
        for name in [n for n in self.processes if n != "sandbox"]:
            self.stop(name)

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


def _per_pass(text: str, passes: int) -> list[int]:
    values = [int(v) for v in text.split(",")]
    return (values + values[-1:] * passes)[:passes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--delays", default="0,50", help="third-party latencies in ms")
    parser.add_argument("--concurrency", default="64,128",
                        help="the pusher's CONCURRENCY for each delay: a slower third party "
                             "needs more handlers in flight (64 is the runtime's default)")
    parser.add_argument("--pushers", default="2,1", help="pusher processes for each delay")
    args = parser.parse_args()
    delays = [int(d) for d in args.delays.split(",")]
    concurrency = _per_pass(args.concurrency, len(delays))
    pushers = _per_pass(args.pushers, len(delays))
    bench = Bench(args.records)
    try:
        bench.setup()
        settings = SandboxSettings.from_env(database_url=bench.database_url,
                                            amqp_url=bench.amqp_url)
        bench.sandbox = SandboxServer(settings).start()
        for index, delay in enumerate(delays):
            bench.run_pass(delay, f"p{index}", concurrency[index], pushers[index])
    finally:
        bench.teardown()
        print(f"\nlogs: {bench.tmp}")


if __name__ == "__main__":
    main()
