"""What the benchmarks count as their own: the processes they start, the PostgreSQL
backends of their own database, the RabbitMQ they run on — and nothing of the
machine's other work (issue 13: a CPU figure that sums every ``postgres`` and
``beam.smp`` process of a shared machine measures the neighbours too).

* :func:`proc_stats` — one process's CPU seconds and peak RSS, from /proc.
* :class:`BackendCpu` — the CPU of the backends serving one database, by client
  (``application_name``); the benchmark's own connections say ``BENCH_APP`` and
  are left out.
* :class:`Broker` — a RabbitMQ node of the benchmark's own (``own``: its CPU is the
  run's alone), or a vhost of ``AMQP_URL``'s node (``shared``: RabbitMQ's CPU can
  then only be read machine-wide, every node on the machine, and says so).

Used by ``bench/pull.py``, ``bench/push.py`` and the benchmarks built on them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg

from shared.messaging.management import AmqpUrl, ManagementClient

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
#: The benchmark's own connections: not counted as the services' PostgreSQL CPU.
BENCH_APP = "bss-sync-bench"
TICKS = os.sysconf("SC_CLK_TCK")
#: The column of a RabbitMQ that is not the run's own: every node of the machine.
MACHINE_WIDE = "RabbitMQ (machine-wide)"


def proc_stats(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system, children waited for included) and peak RSS in bytes;
    ``(0.0, 0)`` once the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / TICKS
        peak = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
        return cpu, peak
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0, 0


def pids_of(command: str) -> list[int]:
    """Pids of the processes whose command (``/proc/PID/comm``) is ``command``."""
    return [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/comm")
            if _read(p) == command]


class BackendCpu(threading.Thread):
    """CPU of the PostgreSQL backends serving one database (other databases on the
    server are neighbours'): every ``interval`` s, the backends' pids, and each one's
    CPU from /proc; a backend gone keeps its last reading. ``total()`` is cumulative."""

    def __init__(self, database_url: str, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.database_url = database_url
        self.interval = interval
        self.latest: dict[int, float] = {}
        self.clients: dict[int, str] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True,
                             application_name=BENCH_APP) as conn:
            while not self.stopping.is_set():
                self.sample(conn)
                self.stopping.wait(self.interval)

    def sample(self, conn: psycopg.Connection[Any]) -> None:
        rows = conn.execute("SELECT pid, application_name FROM pg_stat_activity"
                            " WHERE datname = current_database() AND application_name <> %s",
                            (BENCH_APP,)).fetchall()
        readings = {pid: (proc_stats(pid)[0], name) for pid, name in rows}
        with self.lock:
            for pid, (cpu, name) in readings.items():
                if cpu:
                    self.latest[pid] = max(cpu, self.latest.get(pid, 0.0))
                    self.clients[pid] = name

    def total(self) -> float:
        with self.lock:
            return sum(self.latest.values())

    def by_client(self) -> dict[str, float]:
        """Cumulative CPU per client (``application_name``)."""
        totals: dict[str, float] = {}
        with self.lock:
            for pid, cpu in self.latest.items():
                name = self.clients.get(pid) or "?"
                totals[name] = totals.get(name, 0.0) + cpu
        return totals


class Broker:
    """RabbitMQ for the run: a node of its own (``own``), or a vhost of the machine's."""

    def __init__(self, kind: str, stamp: str) -> None:
        self.kind = kind
        self.vhost = f"bss-sync-bench-{stamp}"
        self.node: Any = None
        self.stack = contextlib.ExitStack()
        self.amqp_url = ""
        #: machine-wide: each ``beam.smp`` seen, (its CPU when first seen, its latest)
        self.seen: dict[int, tuple[float, float]] = {}

    def start(self) -> None:
        if self.kind == "own":
            from tests.fixtures.rabbit_node import own_node
            self.node = self.stack.enter_context(own_node())
            self.amqp_url = self.node.amqp_url
        else:
            self.management().create_vhost(self.vhost)
            self.amqp_url = AmqpUrl.parse(AMQP_URL).with_vhost(self.vhost)

    def management(self) -> ManagementClient:
        return ManagementClient.for_amqp_url(AMQP_URL, os.environ.get("MANAGEMENT_URL"))

    def label(self) -> str:
        """The CPU column's name: ``RabbitMQ`` only when the node is the run's own."""
        return "RabbitMQ" if self.kind == "own" else MACHINE_WIDE

    def stats(self) -> tuple[float, int]:
        """CPU seconds so far and peak RSS: the run's own node's; with a shared broker,
        the CPU every ``beam.smp`` of the machine used since this broker first saw it
        (its neighbours' work included: a vhost's share of a node's CPU is not something
        RabbitMQ reports) and no RSS. A node that stops keeps what it used while seen,
        so the figure never goes down (a neighbour's test node that exits mid-run once
        made it negative)."""
        if self.node is not None:
            return proc_stats(int(self.node.os_pid()))
        for pid in pids_of("beam.smp"):
            cpu = proc_stats(pid)[0]
            if cpu:
                first, latest = self.seen.get(pid, (cpu, cpu))
                self.seen[pid] = (first, max(latest, cpu))
        return sum(latest - first for first, latest in self.seen.values()), 0

    def close(self) -> None:
        if self.kind == "shared":
            with contextlib.suppress(Exception):
                self.management().delete_vhost(self.vhost)
        self.stack.close()


def exit_on_sigterm() -> None:
    """SIGTERM (``kill``, a CI timeout) ends the benchmark through its ``finally``: the
    processes, the broker node and the database it made go with it, none orphaned."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
