"""Run the sandbox on a free port for tests and benchmarks: start, wait for /health, stop.

``SandboxServer(settings)`` runs uvicorn in a **process** by default (its own GIL:
what a benchmark wants; ``workers=2`` for two, on a 2-core machine about 1.7x the
read throughput of one) or in a **thread** of the caller (``mode="thread"``: cheap,
and the app's objects are reachable through :attr:`app`)::

    with SandboxServer(settings) as server:
        httpx.get(server.url + "/organizations/acme/account")
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Literal

import httpx
import uvicorn

from sandbox.settings import SandboxSettings

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class SandboxServer:
    """A sandbox BSS on ``settings.host`` and ``port`` (default: a free one; see the module).

    ``settings.port`` is ignored: tests and benchmarks want a port of their own.
    """

    def __init__(self, settings: SandboxSettings, *, mode: Literal["process", "thread"] = "process",
                 port: int | None = None, workers: int = 1,
                 startup_timeout: float = STARTUP_TIMEOUT, access_log: bool = False) -> None:
        self.settings = settings
        self.mode = mode
        self.startup_timeout = startup_timeout
        self.access_log = access_log
        self.workers = workers
        if workers > 1 and mode != "process":
            raise ValueError("several workers need mode='process'")
        self.port = port or free_port(settings.host)
        self.app = None
        self._process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The server process's id (``mode="process"``), for measurements."""
        return self._process.pid if self._process is not None else None

    @property
    def url(self) -> str:
        """Base URL of the API (no trailing slash)."""
        return f"http://{self.settings.host}:{self.port}"

    def start(self) -> SandboxServer:
        """Start and wait until ``/health`` answers 200. Raises ``RuntimeError`` on failure."""
        if self.mode == "process":
            self._start_process()
        else:
            self._start_thread()
        self._wait_healthy()
        return self

    def stop(self) -> None:
        """Stop gracefully (the relay finishes its round), killing after ``STOP_TIMEOUT``."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(STOP_TIMEOUT)
            self._server = self._thread = None
        if self._output is not None:
            self._output.close()
            self._output = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def output(self) -> str:
        """What the server process printed so far (process mode)."""
        if self._output is None:
            return ""
        self._output.flush()
        self._output.seek(0)
        return self._output.read().decode(errors="replace")

    # ------------------------------------------------------------------ internals

    def _start_process(self) -> None:
        """``python -m sandbox serve``, every setting passed as ``SANDBOX_*`` variables."""
        command = [sys.executable, "-m", "sandbox", "serve", "--port", str(self.port),
                   "--workers", str(self.workers)]
        if self.access_log:
            command.append("--access-log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
        env.update(self.settings.to_env())  # the token too: never on the command line
        self._output = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self._process = subprocess.Popen(command, env=env, stdout=self._output,
                                         stderr=subprocess.STDOUT)

    def _start_thread(self) -> None:
        from sandbox.app import create_app

        self.app = create_app(self.settings)
        config = uvicorn.Config(self.app, host=self.settings.host, port=self.port,
                                log_level="warning", access_log=self.access_log,
                                lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve()),
                                        name="sandbox-server", daemon=True)
        self._thread.start()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer"
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(self.url + "/health", timeout=2.0)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the sandbox did not become healthy in {self.startup_timeout}s "
                           f"at {self.url}: {last}")

    def _check_alive(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            output = self.output()[-2000:]
            self._process = None
            raise RuntimeError(f"the sandbox process exited at start:\n{output}")
        if self._thread is not None and not self._thread.is_alive():
            raise RuntimeError("the sandbox server thread exited at start (see its log)")
