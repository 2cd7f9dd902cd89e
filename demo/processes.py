"""The stack's processes: the bss-sync services, the sandbox BSS, the CLI.

Every long-running process (:class:`LoggedProcess`) is started in a session of its
own (a Ctrl-C in the terminal reaches the demo only, which then stops them in order),
with its output appended to a log file, and is sent SIGTERM by the kernel if the
program that started it dies (:func:`die_with_parent`).

A service is ready when it consumes its queue and gone when the broker has dropped
its consumer (the queue's consumer count, exact through AMQP): :meth:`Service.start`
and :meth:`Service.stop` return at those points, so that what follows — a test's
next step, a restart — starts from a known state.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

import amqp.exceptions
from kombu import Connection

from demo.waiting import wait_until
from sandbox.server import SandboxServer
from sandbox.settings import SandboxSettings
from shared.messaging.amqp_url import kombu_hostname
from shared.messaging.topology import WorkQueue
from shared.paths import project_root

REPO = project_root()
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
UNSUBSCRIBE_TIMEOUT = 30.0


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child receive SIGTERM when its parent dies, even by
    SIGKILL (Linux ``PR_SET_PDEATHSIG``); ``None`` elsewhere.

    Only for processes started from a program's main thread without other threads
    running (``preexec_fn`` is unsafe with threads; the signal fires when the *thread*
    that started the child ends).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


def stop_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group a ``start_new_session`` process leads (its children
    too), SIGKILL it after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class LoggedProcess:
    """``command`` in a session of its own, its output appended to ``log_path``;
    restartable. ``env`` is added to this process's environment; ``orphan_dies``: it
    gets SIGTERM when this program dies (:func:`die_with_parent`)."""

    def __init__(self, name: str, command: list[str], log_path: Path, *,
                 env: dict[str, str] | None = None, cwd: Path = REPO,
                 orphan_dies: bool = True) -> None:
        self.name = name
        self.command = command
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.orphan_dies = orphan_dies
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def launch(self, header: str | None = None) -> None:
        """Start the process (``header``: a line written to the log first); returns at
        once — subclasses' ``start`` waits until it is ready."""
        with self.log_path.open("ab") as log:
            if header:
                log.write(f"{header}\n".encode())
                log.flush()
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                cwd=self.cwd, start_new_session=True,
                preexec_fn=die_with_parent() if self.orphan_dies else None)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, SIGKILL after ``timeout``; the exit code (idempotent: None if not
        running)."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            stop_group(process, timeout)
        return process.returncode

    def kill(self) -> None:
        """SIGKILL now (no graceful anything), as a crashed host would; reaped."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


def consumer_count(amqp_url: str, queue: str) -> int:
    """Consumers of ``queue`` right now (0 when the queue does not exist yet); through
    the first node of ``amqp_url`` that answers."""
    with Connection(kombu_hostname(amqp_url), connect_timeout=5) as conn:
        try:
            return conn.default_channel.queue_declare(queue, passive=True).consumer_count
        except amqp.exceptions.NotFound:
            return 0


class Service(LoggedProcess):
    """``python -m services.<name>`` with ``env``, its output appended to
    ``<log_dir>/<name>.log`` with a header line per start; restartable."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        super().__init__(name, [sys.executable, "-m", f"services.{name}"],
                         log_dir / f"{name}.log", env={**env, "PYTHONUNBUFFERED": "1"})
        self.queue = WorkQueue(name).name
        self.starts = 0

    def start(self, timeout: float = STARTUP_TIMEOUT) -> Service:
        """Start, and wait until the service consumes its queue. Raises ``RuntimeError``
        with the log's tail if it exits first, :class:`~demo.waiting.WaitTimedOut` if
        it does not consume within ``timeout``."""
        if self.alive:
            raise RuntimeError(f"the {self.name} is already running (pid {self.pid})")
        self.starts += 1
        self.launch(header=f"=== start {self.starts} of {self.name} ===")
        wait_until(lambda: consumer_count(self.env["AMQP_URL"], self.queue) >= 1,
                   timeout=timeout, interval=0.05, between=self._check_started,
                   what=f"the {self.name} to consume {self.queue} (log: {self.log_path})",
                   state=self.tail)
        return self

    def _check_started(self) -> None:
        if not self.alive:
            raise RuntimeError(f"the {self.name} exited at start (log: {self.log_path}):"
                               f"\n{self.tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM (graceful: in-flight messages finish), SIGKILL after ``timeout``; then
        until the broker has dropped its consumer. The exit code (idempotent)."""
        was_started = self.process is not None
        code = super().stop(timeout)
        if was_started:
            self._wait_unsubscribed()
        return code

    def kill(self) -> None:
        """SIGKILL now; reaped, and the broker has requeued its unacked messages when
        this returns."""
        was_started = self.process is not None
        super().kill()
        if was_started:
            self._wait_unsubscribed()

    def restart(self) -> Service:
        self.stop()
        return self.start()

    def _wait_unsubscribed(self) -> None:
        """Until the broker has dropped the consumer (and requeued its unacked messages).

        One process per service: no consumer left means this one is gone. Skipped when
        the broker cannot be reached (nothing to wait for then).
        """
        try:
            consumer_count(self.env["AMQP_URL"], self.queue)
        except Exception:
            return
        wait_until(lambda: consumer_count(self.env["AMQP_URL"], self.queue) == 0,
                   timeout=UNSUBSCRIBE_TIMEOUT, interval=0.05,
                   what=f"{self.queue} without a consumer after the {self.name} ended")


class LoggedSandbox(SandboxServer):
    """The sandbox BSS (``python -m sandbox serve``) in its own session, its output in
    ``log_path`` rather than a temporary file, so that it can be read while it runs."""

    def __init__(self, settings: SandboxSettings, log_path: Path, *,
                 port: int | None = None, orphan_dies: bool = True) -> None:
        super().__init__(settings, port=port)
        self.log_path = log_path
        self.orphan_dies = orphan_dies

    def _start_process(self) -> None:
        command = [sys.executable, "-m", "sandbox", "serve", "--port", str(self.port),
                   "--host", self.settings.host]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
        env.update(self.settings.to_env())  # the token too: never on the command line
        output: IO[bytes] = self.log_path.open("w+b")
        self._output = output
        self._process = subprocess.Popen(
            command, env=env, cwd=REPO, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent() if self.orphan_dies else None)

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


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
    """``bss-sync ARGS`` as an operator runs it (the installed command beside this Python)."""
    return run([*bss_sync_command(), *args], env, check=check, timeout=timeout)


def bss_sync_command() -> list[str]:
    """The ``bss-sync`` script of this environment (``python -m shared.cli.main`` otherwise)."""
    script = Path(sys.executable).parent / "bss-sync"
    return [str(script)] if script.exists() else [sys.executable, "-m", "shared.cli.main"]
