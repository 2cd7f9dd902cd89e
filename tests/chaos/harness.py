"""The chaos suite's installation and the hands that break it.

* :class:`ChaosStack` — the end-to-end harness (:class:`tests.e2e.stack.TestStack`:
  own database and vhost, json-server, sandbox BSS, dispatcher, pusher as processes)
  with the services *and the sandbox BSS* reaching PostgreSQL through the suite's
  :class:`~tests.chaos.network.TcpProxy`; the test's own reads go straight to it.
* :class:`FaultRunner` — plays the two lanes of a schedule
  (:mod:`tests.chaos.schedule`): the third-party lane in a thread, the
  infrastructure lane in the caller's; each fault logged with when it started and
  ended; :meth:`FaultRunner.heal` ends every fault still active.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from demo.stack import StackConfig
from tests.chaos.network import HTTP_5XX, HttpFaultProxy
from tests.chaos.schedule import (
    BROKER_KILL,
    BROKER_STOP_APP,
    CLOSE_CONNECTIONS,
    CUT_POSTGRES,
    KILL_DISPATCHER,
    KILL_PUSHER,
    KILL_SANDBOX,
    POSTGRES_DOWN,
    Fault,
)
from tests.e2e.records import ACME_CONNECTOR
from tests.e2e.stack import Connector, TestStack
from tests.fixtures.tcp_proxy import TcpProxy

#: The connector's read timeout in the suite: answers held longer count as timeouts.
READ_TIMEOUT = 1.0
CHAOS_CONNECTOR = "acme-crm-chaos"
#: Before a broker fault: this share of third-party requests fail for this long.
PRELUDE_SHARE = 0.7
PRELUDE_SECONDS = 2.5


def via_proxy(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's (``127.0.0.1:port``)."""
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


def chaos_connector(workdir: Path) -> Connector:
    """``connectors/acme-crm.json`` with a read timeout of :data:`READ_TIMEOUT`."""
    document = json.loads(ACME_CONNECTOR.read_text())
    document["x-synchronization"]["timeouts"]["read"] = READ_TIMEOUT
    path = workdir / "acme-crm-chaos.json"
    path.write_text(json.dumps(document, indent=2))
    return Connector(CHAOS_CONNECTOR, [path])


class ChaosStack(TestStack):
    """A :class:`TestStack` whose processes reach PostgreSQL through ``db_proxy``."""

    def __init__(self, config: StackConfig, connectors: list[Connector],
                 db_proxy: TcpProxy, *, keep_database: bool = False) -> None:
        super().__init__(config, connectors)
        self.keep_database = keep_database
        self.direct_database_url = self.database_url
        # what the services, the CLI and the sandbox BSS are given (Stack.env, start_sandbox)
        self.database_url = via_proxy(self.direct_database_url, db_proxy.port)

    def start(self) -> ChaosStack:
        super().start()
        # TestStack's audit reader would go through the proxy: ours read directly
        assert self._audit is not None
        self._audit.close()
        self._audit = None
        return self

    def drop(self) -> None:
        if self.keep_database:
            print(f"chaos: CHAOS_KEEP set, database {self.config.database!r} kept")
            return
        super().drop()

    def kill_sandbox(self) -> int:
        """SIGKILL the sandbox BSS (its whole process group); its port, to restart on."""
        sandbox = self.sandbox
        assert sandbox is not None and sandbox.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sandbox.pid, signal.SIGKILL)
        assert sandbox._process is not None
        sandbox._process.wait()
        sandbox._process = None
        return sandbox.port


@dataclasses.dataclass
class Played:
    fault: Fault
    started: float
    ended: float | None = None
    error: str | None = None

    def __str__(self) -> str:
        took = f", done at t+{self.ended:.1f}s" if self.ended is not None else ""
        error = f" — FAILED: {self.error}" if self.error else ""
        return f"{self.fault} (began t+{self.started:.1f}s{took}){error}"


class FaultRunner:
    """Plays the infrastructure lane and the third-party lane of a schedule (see the
    module). ``broker`` (optional) is the test's own RabbitMQ node: ``stop_app``,
    ``start_app``, ``kill``, ``start``."""

    def __init__(self, stack: ChaosStack, db_proxy: TcpProxy, http_proxy: HttpFaultProxy,
                 broker: Any = None) -> None:
        self.stack = stack
        self.db_proxy = db_proxy
        self.http_proxy = http_proxy
        self.broker = broker
        self.played: list[Played] = []
        self.stop = threading.Event()
        self._http_thread: threading.Thread | None = None
        self._broker_down = False
        self._started = 0.0

    def start_http(self, http: list[Fault]) -> None:
        """Start the third-party lane in a thread (t = 0 if not yet started)."""
        self._started = self._started or time.monotonic()
        self._http_thread = threading.Thread(target=self._lane, args=(http, self._http),
                                             name="chaos-http", daemon=True)
        self._http_thread.start()

    def play_infra(self, infra: list[Fault]) -> None:
        """Play the infrastructure lane in this thread, until its last fault has ended.

        In the caller's thread on purpose: a service started from a thread gets
        SIGTERM when that thread ends (``PR_SET_PDEATHSIG``, demo/processes.py).
        """
        self._started = self._started or time.monotonic()
        self._lane(infra, self._infra)

    def heal(self) -> None:
        """End every fault: the proxies pass everything, every process runs."""
        self.stop.set()
        if self._http_thread is not None:
            self._http_thread.join(30)
        self.http_proxy.close_window()
        self.db_proxy.accept()
        if self.broker is not None and self._broker_down:  # its fault did not finish
            if self.broker.running:
                self.broker.start_app()
            else:
                self.broker.start()
            self._broker_down = False
        sandbox = self.stack.sandbox
        if sandbox is not None and not sandbox.alive:  # the pusher reads it at that port
            self.stack.start_sandbox(port=sandbox.port)
        for service in self.stack.services.values():
            if not service.alive:
                service.start()

    @property
    def errors(self) -> list[Played]:
        return [p for p in self.played if p.error]

    def now(self) -> float:
        return time.monotonic() - self._started

    def _lane(self, lane: list[Fault], play: Callable[[Fault], None]) -> None:
        for fault in lane:
            if self.stop.wait(max(0.0, fault.at - self.now())):  # the schedule itself
                return
            played = Played(fault, self.now())
            self.played.append(played)
            try:
                play(fault)
            except Exception as exc:  # reported with the schedule; the run goes on
                played.error = f"{type(exc).__name__}: {str(exc)[:300]}"
            played.ended = self.now()

    def _http(self, fault: Fault) -> None:
        self.http_proxy.open_window(fault.kind, fault.share, fault.duration)

    def _down(self, seconds: float) -> None:
        self.stop.wait(seconds)  # the fault's downtime

    def _infra(self, fault: Fault) -> None:
        stack = self.stack
        if fault.kind in (KILL_PUSHER, KILL_DISPATCHER):
            service = stack.services[fault.kind.removeprefix("kill-")]
            service.kill()
            self._down(fault.duration)
            service.start()
        elif fault.kind == KILL_SANDBOX:
            port = stack.kill_sandbox()
            self._down(fault.duration)
            stack.start_sandbox(port=port)
        elif fault.kind == CLOSE_CONNECTIONS:
            stack.management.for_vhost(stack.config.vhost).close_connections()
        elif fault.kind == CUT_POSTGRES:
            self.db_proxy.cut()
        elif fault.kind == POSTGRES_DOWN:
            self.db_proxy.refuse_for(fault.duration)
            self._down(fault.duration)
        elif fault.kind == BROKER_STOP_APP:
            self._fill_retry_queues()
            self._broker_down = True
            self.broker.stop_app()
            self._down(fault.duration)
            self.broker.start_app()
            self._broker_down = False
        elif fault.kind == BROKER_KILL:
            self._fill_retry_queues()
            self._broker_down = True
            self.broker.kill()
            self._down(fault.duration)
            self.broker.start()
            self._broker_down = False
        else:
            raise ValueError(f"unknown fault {fault.kind!r}")

    def _fill_retry_queues(self) -> None:
        """Before the broker goes: the third party fails most requests for a while, so
        that retry copies wait on every rung when it does (what a broker restart must
        not lose, docs/architecture.md §4)."""
        self.http_proxy.open_window(HTTP_5XX, PRELUDE_SHARE, PRELUDE_SECONDS + 1)
        self._down(PRELUDE_SECONDS)
