"""Pull path, end to end: companies changed on a stand-in third party until they are
accounts in the sandbox BSS, with every real process in between.

    stand-in CRM ─listing─▶ discovery (bss-sync pull) ─▶ sync.pull ─▶ puller(s) ─▶ sandbox BSS
                                                                         └─▶ links, audit_log

The third party is ``bench/standin.py`` (the Acme CRM's companies, paged as
json-server pages them: ``_page``/``_limit``, ``updatedAt_gte``) holding N companies
(default 10,000), each with every field ``CompanyToAccount`` maps. The connector is
``connectors/acme-crm.json``, its ``Account`` object's page size set to
``--page-size``; its ``pull.read`` is taken out unless ``--read`` (with it, discovery
publishes only the external id and the puller reads each company: one more request
a record).

Two passes, each one ``bss-sync pull --instance ID --wait`` started with the pullers
already running and idle: ``new`` (N companies the BSS never saw: N creates) and
``changed`` (the stand-in changes every company, then the next, incremental
discovery: N updates, each a BSS read with its ETag and a merge patch). Per pass:

* listing: companies published (confirmed by the broker) / the time from the
  stand-in receiving the first list request to the discovery's ``finished`` audit
  row (written once the last page's messages are confirmed and the cursor stored);
* end to end: the puller's ``created``/``updated`` audit rows (nothing else counts)
  / the time from launching ``bss-sync pull`` to the last of those rows (its ``at``,
  stamped when the outcome is known; its commit follows within the audit writer's
  batch interval);
* per process, over that end-to-end window, CPU seconds, CPU per record and peak
  RSS: the discovery (the ``bss-sync pull`` process, start-up included: its own
  ``getrusage`` at exit), the puller(s), the sandbox BSS, the stand-in, PostgreSQL
  (the backends of this run's database only, sampled every 0.25 s — the server's
  shared WAL writer and checkpointer are not counted) and RabbitMQ (a node of the
  benchmark's own, started for it: the machine's node serves others too; with
  ``--broker shared`` the column is "RabbitMQ (machine-wide)": every node of the
  machine, neighbours included). ``bench/harness.py`` holds what counts as the run's.

One puller with 128 handlers by default: a BSS write waits ~100-250 ms here (the
sandbox commits its writes one after the other), so many must be in flight (Little's
law), and one process serves them with bigger batches (claims, links, audit rows)
than two: on this machine two pullers of 64 cost ~1.1 ms CPU a record between them,
one of 128 ~0.85 ms, for no more throughput. The BSS's own ceiling is measured first
(``--bss-writes``: creates, and reads + merge patches, with as many callers on the
pullers' BSS client and no bss-sync service running): the pull path cannot write into
the BSS faster than the BSS accepts writes.

Asserts nothing. Uses its own database, dropped at the end.

    .venv/bin/python bench/pull.py [--records N] [--page-size 100] [--pullers 1]
                                   [--concurrency 128] [--passes new,changed] [--read]
                                   [--bss-writes 2000] [--broker own|shared]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
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
from shared.messaging.topology import DISPATCHER, PULLER  # noqa: E402

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ORG = "bench"
INSTANCE = "bench-crm"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.records: int = args.records
        stamp = f"{int(time.time())}_{uuid.uuid4().hex[:6]}"
        self.database = f"bss_sync_bench_{stamp}"
        self.database_url = f"{DATABASE_URL.rsplit('/', 1)[0]}/{self.database}"
        self.broker = Broker(args.broker, stamp.replace("_", "-"))
        self.tmp = Path(tempfile.mkdtemp(prefix="bss-sync-bench-pull-"))
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.sandbox: SandboxServer | None = None
        self.standin = ""
        self.backends = BackendCpu(self.database_url)
        self.results: list[dict[str, Any]] = []

    # -- set-up / tear-down ------------------------------------------------------------

    def setup(self) -> None:
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        self.broker.start()
        for command in (["db", "upgrade"], ["topology", "declare"]):
            subprocess.run([sys.executable, "-m", "shared.cli.main", *command],
                           env=self.env(), check=True, stdout=subprocess.DEVNULL)
        settings = SandboxSettings.from_env(database_url=self.database_url,
                                            amqp_url=self.broker.amqp_url)
        self.sandbox = SandboxServer(settings).start()
        self.standin = self.start_standin()
        self.apply(self.connector())
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

    def start(self, name: str, args: list[str], **env: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen([sys.executable, *args], env=self.env(**env), stdout=log,
                                   stderr=subprocess.STDOUT, cwd=ROOT)
        self.processes[name] = process
        return process

    def start_standin(self, *options: str, name: str = "stand-in") -> str:
        """``bench/standin.py`` with ``options`` (default: ``--companies N``); its URL."""
        port = free_port()
        self.start(name, [str(ROOT / "bench" / "standin.py"), str(port),
                          *(options or ("--companies", str(self.records)))])
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{url}/_bench/stats", timeout=1).raise_for_status()
                return url
            time.sleep(0.1)
        raise RuntimeError("the stand-in third party did not start")

    def connector(self) -> Path:
        """``acme-crm.json`` with the ``Account`` listing's page size, without ``pull.read``
        unless ``--read``."""
        document = json.loads((ROOT / "connectors" / "acme-crm.json").read_text())
        pull = document["x-synchronization"]["objects"]["Account"]["pull"]
        pull["list"]["pagination"]["size"] = self.args.page_size
        if not self.args.read:
            pull.pop("read", None)
        path = self.tmp / "acme-crm-bench.json"
        path.write_text(json.dumps(document))
        return path

    def permissions(self) -> dict[str, Any]:
        return {"account": {"pull": ["create", "update"]}}

    def apply(self, connector: Path) -> None:
        installation = {
            "connectors": [{"id": "acme", "spec": str(connector)}],
            "organizations": [{"id": ORG, "name": "Bench", "instances": [{
                "id": INSTANCE, "name": "Bench CRM", "connector": "acme",
                "server": self.standin, "credentials": {"apiKey": "env:BENCH_API_KEY"},
                "permissions": self.permissions(),
                # the stand-in has no limit: let the connector's not be the bottleneck
                "rateLimit": {"requests": 100000, "per": "1s", "concurrency": 512}}]}],
        }
        path = self.tmp / "installation.json"
        path.write_text(json.dumps(installation))
        subprocess.run([sys.executable, "-m", "shared.cli.main", "apply", str(path)],
                       env=self.env(), check=True, stdout=subprocess.DEVNULL)

    def measure_bss(self, passes: list[str]) -> None:
        """The BSS's own ceiling: ``--bss-writes`` creates (then as many reads with their
        ETag and merge patches, for ``changed``) sent by the puller's BSS client with as
        many in flight as the pullers have handlers, no bss-sync service running."""
        count = self.args.bss_writes
        if not count:
            return
        in_flight = self.args.pullers * self.args.concurrency
        created, updated = asyncio.run(self._bss_writes(count, in_flight, "changed" in passes))
        line = (f"the sandbox BSS alone, {in_flight} callers on the pullers' BSS client (no "
                f"service running): {count / created:,.0f} creates/s")
        if updated:
            line += f", {count / updated:,.0f} read + merge patch/s"
        print(line + f" ({count:,} each)")

    async def _bss_writes(self, count: int, in_flight: int,
                          updates: bool) -> tuple[float, float]:
        assert self.sandbox is not None
        bss = BssClient(self.sandbox.url, batch_reads=False)
        org = "bench-ceiling"
        ids: list[str] = []

        async def run(work: Any) -> float:
            queue = list(range(count))
            started = time.perf_counter()

            async def worker() -> None:
                while queue:
                    await work(queue.pop())

            await asyncio.gather(*(worker() for _ in range(min(in_flight, count))))
            return time.perf_counter() - started

        async def create(i: int) -> None:
            record = await bss.create(org, "account", {
                "name": f"Ceiling {i}", "code": f"CEIL-{i:06d}", "type": "customer",
                "currency": "EUR"}, origin=INSTANCE, idempotency_key=str(uuid.uuid4()))
            ids.append(record["id"])

        async def update(i: int) -> None:
            current = await bss.read(org, "account", ids[i])
            assert current is not None
            await bss.patch(org, "account", ids[i], {"name": f"Ceiling {i} v2"},
                            origin=INSTANCE, if_match=current.etag)

        try:
            created = await run(create)
            updated = await run(update) if updates else 0.0
        finally:
            await bss.aclose()
        return created, updated

    def start_pullers(self) -> None:
        for n in range(self.args.pullers):
            self.start(PULLER if n == 0 else f"{PULLER}-{n + 1}", ["-m", "services.puller"],
                       BSS_API_URL=self.sandbox.url if self.sandbox else "",
                       CONCURRENCY=str(self.args.concurrency))
        deadline = time.monotonic() + 60
        while self.consumers() < self.args.pullers:
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("the pullers did not start consuming in time")
            time.sleep(0.2)

    def consumers(self) -> int:
        connection = pika.BlockingConnection(pika.URLParameters(self.broker.amqp_url))
        try:
            declared = connection.channel().queue_declare(PULLER, passive=True)
            return int(declared.method.consumer_count)
        finally:
            connection.close()

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if name != DISPATCHER and process.poll() is not None:
                raise RuntimeError(f"{name} exited ({process.returncode}); see "
                                   f"{self.tmp / (name + '.log')}")

    # -- one pass -----------------------------------------------------------------------

    @contextlib.contextmanager
    def bench_db(self) -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(self.database_url, autocommit=True,
                             application_name=BENCH_APP) as conn:
            yield conn

    def outcomes(self, conn: psycopg.Connection[Any], since: float) -> dict[str, int]:
        rows = conn.execute("SELECT outcome, count(*) FROM audit_log"
                            " WHERE at >= to_timestamp(%s) AND service = %s GROUP BY outcome",
                            (since, PULLER)).fetchall()
        return {str(outcome): int(count) for outcome, count in rows}

    def snapshot(self) -> dict[str, tuple[float, int]]:
        values = {name: proc_stats(p.pid) for name, p in self.processes.items()
                  if name != DISPATCHER}
        if self.sandbox is not None and self.sandbox.pid:
            values["sandbox"] = proc_stats(self.sandbox.pid)
        values["PostgreSQL"] = (self.backends.total(), 0)
        values[self.broker.label()] = self.broker.stats()
        return values

    def run_pass(self, name: str) -> None:
        expected = "created" if name == "new" else "updated"
        if name == "changed":
            httpx.post(f"{self.standin}/_bench/change", timeout=60).raise_for_status()
        print(f"\n== pass {name!r}: {self.records:,} companies {name} on the stand-in → "
              f"{expected} in the BSS ==")
        time.sleep(1.0)  # the backend sampler's view is fresh
        before = self.snapshot()
        clients_before = self.backends.by_client()
        started = time.time()
        discovery = self.start(DISPATCHER, ["-m", "shared.cli.main", "pull",
                                            "--instance", INSTANCE, "--wait"])
        discovery_usage: Any = None
        done, outcomes = 0, {}
        deadline = time.monotonic() + max(300, self.records / 20)
        with self.bench_db() as conn:
            while True:
                if discovery_usage is None:
                    pid, status, usage = os.wait4(discovery.pid, os.WNOHANG)
                    if pid:
                        discovery.returncode = os.waitstatus_to_exitcode(status)
                        discovery_usage = usage
                        if discovery.returncode != 0:
                            raise RuntimeError(f"bss-sync pull exited {discovery.returncode};"
                                               f" see {self.tmp / (DISPATCHER + '.log')}")
                outcomes = self.outcomes(conn, started)
                done = outcomes.get(expected, 0)
                settled = sum(v for k, v in outcomes.items() if k != "retrying")
                if discovery_usage is not None and (done >= self.records
                                                    or settled >= self.published(conn, started)):
                    break
                self.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {done}/{self.records} {expected} in time: "
                                       f"{outcomes}")
                time.sleep(0.25)
            last_at, finished_at, published = self.times(conn, started, expected)
        after = self.snapshot()
        clients = {name: cpu - clients_before.get(name, 0.0)
                   for name, cpu in self.backends.by_client().items()}
        stats = httpx.get(f"{self.standin}/_bench/stats", timeout=5).json()
        self.report(name, expected, started, done, outcomes, before, after, discovery_usage,
                    last_at, finished_at, published, stats)
        print("PostgreSQL's CPU by client, ms per record: " + ", ".join(
            f"{client or '?'} {cpu / max(done, 1) * 1000:.3f}"
            for client, cpu in sorted(clients.items(), key=lambda c: -c[1])))

    def published(self, conn: psycopg.Connection[Any], since: float) -> int:
        row = conn.execute(
            "SELECT coalesce(sum((details->>'published')::int), 0) FROM audit_log"
            " WHERE at >= to_timestamp(%s) AND service = %s AND action = 'discover'"
            " AND details->>'stage' = 'finished'", (since, DISPATCHER)).fetchone()
        return int(row[0]) if row else 0

    def times(self, conn: psycopg.Connection[Any], since: float,
              expected: str) -> tuple[float, float, int]:
        """The last ``expected`` row's time; the discovery's finished row's time and count."""
        last = conn.execute(
            "SELECT extract(epoch FROM max(at)) FROM audit_log WHERE at >= to_timestamp(%s)"
            " AND service = %s AND outcome = %s", (since, PULLER, expected)).fetchone()
        finished = conn.execute(
            "SELECT extract(epoch FROM at), (details->>'published')::int FROM audit_log"
            " WHERE at >= to_timestamp(%s) AND service = %s AND action = 'discover'"
            " AND details->>'stage' = 'finished'", (since, DISPATCHER)).fetchone()
        assert last is not None and finished is not None
        return float(last[0] or 0), float(finished[0]), int(finished[1])

    def report(self, name: str, expected: str, started: float, done: int,
               outcomes: dict[str, int], before: dict[str, tuple[float, int]],
               after: dict[str, tuple[float, int]], usage: Any, last_at: float,
               finished_at: float, published: int, stats: dict[str, Any]) -> None:
        listing = finished_at - stats["listFirst"]
        elapsed = last_at - started
        print(f"discovery: {published:,} companies published in {stats['listRequests']} list "
              f"requests ({stats['reads']:,} single reads); the first list request "
              f"{stats['listFirst'] - started:.2f} s after launching `bss-sync pull`")
        print(f"listing: {published / listing:,.0f} records/s ({published:,} published and "
              f"confirmed, from the first list request to the discovery's finished row, "
              f"{listing:.2f} s)")
        others = {k: v for k, v in sorted(outcomes.items()) if k != expected}
        print(f"end to end: {done / elapsed:,.0f} records/s ({done:,} {expected} audit rows, "
              f"from launching `bss-sync pull` to the last of them, {elapsed:.2f} s)"
              + (f"; other puller rows: {others}" if others else ""))
        print(f"{'process':<40} {'CPU s':>7} {'CPU %':>6} {'ms CPU/record':>14} {'peak RSS':>9}"
              "   (over the end-to-end window)")
        rows = [("discovery (bss-sync pull, start-up incl.)",
                 usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024)]
        for process, (cpu, peak) in after.items():
            if process in before:
                rows.append((process, cpu - before[process][0], peak))
        total = 0.0
        for process, cpu, peak in rows:
            total += cpu
            shown = ("(server)" if process.startswith(("PostgreSQL", "RabbitMQ")) and not peak
                     else f"{peak / 1e6:.0f} MB")
            print(f"{process:<40} {cpu:>7.2f} {cpu / elapsed * 100:>5.0f}% "
                  f"{cpu / max(done, 1) * 1000:>14.3f} {shown:>9}")
        print(f"{'all of them':<40} {total:>7.2f} {total / elapsed * 100:>5.0f}% "
              f"{total / max(done, 1) * 1000:>14.3f}")
        self.results.append({"pass": name, "records": done, "listing": published / listing,
                             "end_to_end": done / elapsed})


def command_line(args: argparse.Namespace) -> str:
    parts = [".venv/bin/python", "bench/pull.py", "--records", str(args.records),
             "--page-size", str(args.page_size), "--pullers", str(args.pullers),
             "--concurrency", str(args.concurrency), "--passes", args.passes,
             "--bss-writes", str(args.bss_writes), "--broker", args.broker]
    return shlex.join(parts + (["--read"] if args.read else []))


def main(argv: list[str] | None = None) -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000,
                        help="companies on the stand-in (default 10000)")
    parser.add_argument("--page-size", type=int, default=100,
                        help="the listing's page size (default 100, the connector's)")
    parser.add_argument("--pullers", type=int, default=1, help="puller processes (default 1)")
    parser.add_argument("--concurrency", type=int, default=128,
                        help="each puller's CONCURRENCY (default 128; the runtime's is 64)")
    parser.add_argument("--passes", default="new,changed",
                        help="new (creates), changed (updates), in that order")
    parser.add_argument("--read", action="store_true",
                        help="keep the connector's pull.read: messages carry the external id "
                             "and the puller reads each company")
    parser.add_argument("--bss-writes", type=int, default=2000,
                        help="writes of the BSS-alone measurement (default 2000; 0: none)")
    parser.add_argument("--broker", choices=("own", "shared"), default="own",
                        help="a RabbitMQ node of the benchmark's own (default), or a vhost "
                             "of AMQP_URL's node")
    args = parser.parse_args(argv)
    passes = [p for p in args.passes.split(",") if p]
    if not passes or set(passes) - {"new", "changed"} or passes[0] != "new":
        parser.error("--passes: new, then optionally changed")
    print(f"$ {command_line(args)}")
    bench = Bench(args)
    try:
        bench.setup()
        bench.measure_bss(passes)
        bench.start_pullers()
        for name in passes:
            bench.run_pass(name)
    finally:
        bench.teardown()
        print(f"\nlogs: {bench.tmp}")
    print(f"$ {command_line(args)}")
    for result in bench.results:
        print(f"pass {result['pass']}: {result['records']:,} records; listing "
              f"{result['listing']:,.0f} records/s, end to end {result['end_to_end']:,.0f} "
              "records/s")


if __name__ == "__main__":
    main()
