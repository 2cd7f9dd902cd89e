"""The bss-sync services as real processes, and the CLI, for the end-to-end tests.

``ServiceProcess("pusher", env, log_dir)`` (the demo's ``Service``, plus what tests need)
runs ``python -m services.pusher`` with the
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

from demo.processes import QUEUES, STOP_TIMEOUT, Service, consumer_count
from tests.e2e.thirdparty import REPO


class ServiceProcess(Service):
    """One service process; restartable; its log kept across starts. ``env`` is added
    to the test's environment."""

    def __init__(self, service: str, env: dict[str, str], log_dir: Path) -> None:
        super().__init__(service, env, log_dir, append=True)

    @property
    def service(self) -> str:
        return self.name

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Graceful stop (SIGTERM), SIGKILL after ``timeout``; the exit code (idempotent)."""
        had_process = self.process is not None
        code = super().stop(timeout)
        if had_process:
            self._wait_unsubscribed()
        return code

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
        queue = QUEUES[self.name]
        deadline = time.monotonic() + timeout
        while consumer_count(self.env["AMQP_URL"], queue) > 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{queue} still has a consumer {timeout}s after "
                                   f"{self.name} ended")
            time.sleep(0.05)

    def restart(self) -> ServiceProcess:
        self.stop()
        self.start()
        return self

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


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
