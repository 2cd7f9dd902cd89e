"""Push path, end to end: accounts created in the sandbox BSS until they exist in a
third party, with every real process in between.

    sandbox BSS ─outbox─▶ bss.events ─▶ dispatcher ─▶ sync.push ─▶ pusher ─▶ third party

N accounts (default 10,000) are created through the sandbox's API; the
dispatcher and one pusher run as processes with their defaults; the third party
is a local stub speaking the Acme CRM API (``connectors/acme-crm.json``: a match
GET, then a create POST per account) that answers in 0 ms, then, in a second pass
with new accounts, in 50 ms. Prints records/s end to end, p50/p99 latency from
the BSS write to the pusher's audit row, and CPU seconds and peak RSS per
process. Asserts nothing. Uses its own database and vhost, dropped at the end.

    .venv/bin/python bench/push.py [--records N] [--delays 0,50]
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

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ORG = "bench"
INSTANCE = "bench-crm"

STUB = r'''
import asyncio, itertools, json, sys
DELAY = float(sys.argv[2]) / 1000
ids = itertools.count(1)
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if DELAY:
        await asyncio.sleep(DELAY)
    method = scope["method"]
    if method == "GET":
        status, payload = 200, b"[]"
    elif method == "POST":
        record = json.loads(body or b"{}")
        record["id"] = next(ids)
        status, payload = 201, json.dumps(record).encode()
    else:
        status, payload = 200, body or b"{}"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})
if __name__ == "__main__":
    import uvicorn
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False)
'''


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
        script = self.tmp / "stub.py"
        script.write_text(STUB)
        self.start("third-party", [str(script), str(port), str(delay_ms)])
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
                "rateLimit": {"requests": 100000, "per": "1s", "concurrency": 64}}]}],
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
                    response = await client.post(f"/organizations/{ORG}/account", json={
                        "name": f"Account {tag}-{i}", "code": f"{tag}-{i:06d}",
                        "type": "customer", "currency": "EUR", "industry": "Software",
                        "email": f"billing{i}@example.com", "numberOfEmployees": i % 500,
                        "addresses": [{"type": "billing", "isBilling": True,
                                       "line1": f"{i} Main Street", "city": "Paris",
                                       "postalCode": "75001", "countryCode": "FR"}]})
                    response.raise_for_status()

            await asyncio.gather(*(worker() for _ in range(32)))
        return time.perf_counter() - started

    def pushed(self, conn: psycopg.Connection[Any], since: float) -> int:
        row = conn.execute(
            "SELECT count(*) FROM audit_log WHERE service = 'pusher' AND outcome = 'created'"
            " AND at >= to_timestamp(%s)", (since,)).fetchone()
        return int(row[0]) if row else 0

    def run_pass(self, delay_ms: int, tag: str) -> None:
        stub = self.start_stub(delay_ms)
        self.apply(stub)
        before = {name: proc_stats(p.pid) for name, p in self.processes.items()}
        sandbox_pid = self.sandbox.pid if self.sandbox is not None else None
        sandbox_before = proc_stats(sandbox_pid) if sandbox_pid else (0.0, 0)
        wall_start = time.time()
        create_seconds = asyncio.run(self.create_accounts(self.sandbox.url, self.records, tag))
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            deadline = time.monotonic() + max(600, self.records / 5)
            done = 0
            while time.monotonic() < deadline:
                done = self.pushed(conn, wall_start)
                if done >= self.records:
                    break
                time.sleep(0.5)
            latencies = conn.execute(
                "SELECT extract(epoch FROM a.at - (r.data->>'createdAt')::timestamptz)"
                "  FROM audit_log a JOIN sandbox.records r"
                "    ON r.id = a.record_id AND r.entity = 'account' AND r.org_id = %s"
                " WHERE a.service = 'pusher' AND a.outcome = 'created'"
                "   AND a.at >= to_timestamp(%s) ORDER BY 1", (ORG, wall_start)).fetchall()
            span = conn.execute(
                "SELECT extract(epoch FROM max(a.at)) FROM audit_log a"
                " WHERE a.service = 'pusher' AND a.outcome = 'created'"
                "   AND a.at >= to_timestamp(%s)", (wall_start,)).fetchone()
        values = [float(r[0]) for r in latencies]
        elapsed = (float(span[0]) - wall_start) if span and span[0] else float("nan")
        print(f"\n== third party answering in {delay_ms} ms: {done}/{self.records} accounts "
              f"pushed ==")
        print(f"end to end: {done / elapsed:,.0f} records/s ({elapsed:.1f} s from the first "
              f"BSS write to the last audit row; the BSS took {create_seconds:.1f} s to accept "
              f"the writes)")
        if values:
            print(f"latency BSS write → audit row: p50 {_pct(values, 50) * 1000:,.0f} ms, "
                  f"p99 {_pct(values, 99) * 1000:,.0f} ms, max {values[-1] * 1000:,.0f} ms")
        print(f"{'process':<12} {'CPU s':>8} {'CPU %':>7} {'peak RSS':>10}")
        for name, process in self.processes.items():
            cpu, peak = proc_stats(process.pid)
            cpu -= before.get(name, (0.0, 0))[0]
            print(f"{name:<12} {cpu:>8.1f} {cpu / elapsed * 100:>6.0f}% {peak / 1e6:>8.0f} MB")
        if sandbox_pid:
            cpu, peak = proc_stats(sandbox_pid)
            cpu -= sandbox_before[0]
            print(f"{'sandbox':<12} {cpu:>8.1f} {cpu / elapsed * 100:>6.0f}% {peak / 1e6:>8.0f} MB")
        self.stop("third-party")


def _pct(values: list[float], percentile: int) -> float:
    index = min(len(values) - 1, max(0, round(percentile / 100 * len(values)) - 1))
    return values[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--delays", default="0,50", help="third-party latencies in ms")
    args = parser.parse_args()
    bench = Bench(args.records)
    try:
        bench.setup()
        settings = SandboxSettings.from_env(database_url=bench.database_url,
                                            amqp_url=bench.amqp_url)
        bench.sandbox = SandboxServer(settings).start()
        bench.start("dispatcher", ["-m", "services.dispatcher"])
        bench.start("pusher", ["-m", "services.pusher"], BSS_API_URL=bench.sandbox.url)
        for index, delay in enumerate(int(d) for d in args.delays.split(",")):
            bench.run_pass(delay, f"p{index}")
    finally:
        bench.teardown()
        print(f"\nlogs: {bench.tmp}")


if __name__ == "__main__":
    main()
