"""The bss-sync services as real processes, and the CLI, for the end-to-end tests.

``ServiceProcess("pusher", env, log_dir)`` runs ``python -m services.pusher`` with the
environment a deployment would give it (``AMQP_URL``, ``DATABASE_URL``, …), its
stdout and stderr appended to ``<log_dir>/pusher.log`` (one header line per start).
:meth:`start` waits until the service consumes its queue (the queue's consumer count,
exact through AMQP); :meth:`stop` is SIGTERM (graceful) then SIGKILL; :meth:`kill` is
SIGKILL at once, as a crashed host would do it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import amqp.exceptions
from kombu import Connection

from tests.e2e.thirdparty import REPO, stop_group

STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
#: The queue each service consumes (DESIGN §4).
QUEUES = {"dispatcher": "dispatcher.events", "pusher": "pusher", "puller": "puller"}


def consumer_count(amqp_url: str, queue: str) -> int:
    """Consumers of ``queue`` right now (0 when the queue does not exist yet)."""
    with Connection(amqp_url, connect_timeout=5) as conn:
        try:
            return conn.default_channel.queue_declare(queue, passive=True).consumer_count
        except amqp.exceptions.NotFound:
            return 0


class ServiceProcess:
    """One service process; restartable. ``env`` is added to the test's environment."""

    def __init__(self, service: str, env: dict[str, str], log_dir: Path) -> None:
        self.service = service
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log_path = log_dir / f"{service}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = STARTUP_TIMEOUT) -> ServiceProcess:
        """Start and wait until it consumes its queue. Raises ``RuntimeError`` with the
        log's tail if it exits or does not consume within ``timeout``."""
        if self.alive:
            raise RuntimeError(f"{self.service} is already running (pid {self.pid})")
        self.starts += 1
        queue = QUEUES[self.service]
        with self.log_path.open("ab") as log:
            log.write(f"=== start {self.starts} of {self.service} ===\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.service}"], cwd=REPO, env=self.env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while consumer_count(self.env["AMQP_URL"], queue) < 1:
            if not self.alive:
                raise RuntimeError(f"{self.service} exited with {self.process.returncode} at "
                                   f"start:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.service} does not consume {queue} after "
                                   f"{timeout}s:\n{self.tail()}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Graceful stop (SIGTERM), SIGKILL after ``timeout``; the exit code (idempotent)."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            stop_group(process, timeout)
        self._wait_unsubscribed()
        return process.returncode

    def kill(self) -> None:
        """SIGKILL now (no graceful anything), and reap it."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self._wait_unsubscribed()

    def _wait_unsubscribed(self, timeout: float = 30.0) -> None:
        """Until the broker has dropped the consumer (and requeued its unacked messages).

        The tests run one process per service: no consumer left means this one is gone.
        """
        queue = QUEUES[self.service]
        deadline = time.monotonic() + timeout
        while consumer_count(self.env["AMQP_URL"], queue) > 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{queue} still has a consumer {timeout}s after "
                                   f"{self.service} ended")
            time.sleep(0.05)

    def restart(self) -> ServiceProcess:
        self.stop()
        return self.start()

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120.0) -> str:
    """``bss-sync ARGS`` as an operator runs it; its output. Raises ``AssertionError``
    with the output when it fails."""
    command = [str(Path(sys.executable).parent / "bss-sync"), *args]
    result = subprocess.run(command, cwd=REPO, env={**os.environ, **env}, timeout=timeout,
                            capture_output=True, text=True, check=False)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise AssertionError(f"`bss-sync {' '.join(args)}` exited with {result.returncode}:\n"
                             f"{output}")
    return output
