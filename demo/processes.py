"""The demo's processes: the bss-sync services, the sandbox BSS, the CLI.

Every long-running process is started in a session of its own (a Ctrl-C in the
terminal reaches the demo only, which then stops them in order), with its output
in a log file under the demo's directory, and is sent SIGTERM by the kernel if the
demo itself dies (:func:`demo.thirdparty.die_with_parent`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import amqp.exceptions
from kombu import Connection

from demo.thirdparty import REPO, die_with_parent, stop_group
from sandbox.server import SandboxServer
from sandbox.settings import SandboxSettings

STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
#: The queue each service consumes (docs/architecture.md §4).
QUEUES = {"dispatcher": "dispatcher.events", "pusher": "pusher", "puller": "puller"}


def consumer_count(amqp_url: str, queue: str) -> int:
    """Consumers of ``queue`` right now (0 when the queue does not exist yet)."""
    with Connection(amqp_url, connect_timeout=5) as conn:
        try:
            return conn.default_channel.queue_declare(queue, passive=True).consumer_count
        except amqp.exceptions.NotFound:
            return 0


class Service:
    """``python -m services.<name>`` with ``env``, its output in ``<log_dir>/<name>.log``
    (``append``: kept across starts, a header line per start — as the tests want it)."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, *,
                 append: bool = False) -> None:
        self.name = name
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.append = append
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = STARTUP_TIMEOUT) -> Service:
        """Start, and wait until the service consumes its queue. Raises ``RuntimeError``
        with the log's tail if it exits or does not consume within ``timeout``."""
        if self.alive:
            raise RuntimeError(f"the {self.name} is already running (pid {self.pid})")
        self.starts += 1
        with self.log_path.open("ab" if self.append else "wb") as log:
            if self.append:
                log.write(f"=== start {self.starts} of {self.name} ===\n".encode())
                log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.name}"], cwd=REPO, env=self.env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent())
        queue = QUEUES[self.name]
        deadline = time.monotonic() + timeout
        while consumer_count(self.env["AMQP_URL"], queue) < 1:
            if not self.alive:
                raise RuntimeError(f"the {self.name} exited at start (log: {self.log_path}):"
                                   f"\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {self.name} does not consume {queue} after "
                                   f"{timeout:.0f}s (log: {self.log_path}):\n{self.tail()}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM (graceful: in-flight messages finish), SIGKILL after ``timeout``."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            stop_group(process, timeout)
        return process.returncode

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class LoggedSandbox(SandboxServer):
    """The sandbox BSS (``python -m sandbox serve``) in its own session, its output in
    ``log_path`` rather than a temporary file, so that it can be read while it runs."""

    def __init__(self, settings: SandboxSettings, log_path: Path, *,
                 port: int | None = None) -> None:
        super().__init__(settings, port=port)
        self.log_path = log_path

    def _start_process(self) -> None:
        command = [sys.executable, "-m", "sandbox", "serve", "--port", str(self.port),
                   "--host", self.settings.host]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
        env.update(self.settings.to_env())
        output: IO[bytes] = self.log_path.open("w+b")
        self._output = output
        self._process = subprocess.Popen(command, env=env, cwd=REPO, stdout=output,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=die_with_parent())

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None


def run(command: list[str], env: dict[str, str], *, timeout: float = 120.0,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (output captured); with ``check``, raise
    ``RuntimeError`` showing its output when it fails."""
    result = subprocess.run(command, cwd=REPO, env={**os.environ, **env}, timeout=timeout,
                            capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        shown = " ".join(command[1:] if command[0] == sys.executable else command)
        raise RuntimeError(f"`{shown}` exited with {result.returncode}:\n"
                           f"{(result.stdout + result.stderr).strip()}")
    return result


def bss_sync(args: list[str], env: dict[str, str], *, check: bool = True,
             timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``bss-sync ARGS`` (the installed command beside this Python)."""
    return run([*bss_sync_command(), *args], env, check=check, timeout=timeout)


def bss_sync_command() -> list[str]:
    """The ``bss-sync`` script of this environment (``python -m shared.cli.main`` otherwise)."""
    script = Path(sys.executable).parent / "bss-sync"
    return [str(script)] if script.exists() else [sys.executable, "-m", "shared.cli.main"]
