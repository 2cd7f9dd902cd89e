"""The Acme CRM stand-in: json-server 0.17 (npm) serving the API of ``connectors/acme-crm.json``.

Used by the demo (``python -m demo``) and by the end-to-end tests (``tests/e2e``):

* :class:`JsonServer` runs ``acme_crm/server.js`` — json-server through its module API,
  the database in memory, and ``acme_crm/middleware.js`` adding what a real CRM does
  and json-server does not (API key, timestamps, idempotency keys, ids never reused).
  ``reset()`` empties it; ``state()`` reads it whole.
* :class:`NodeProcess` runs any Node.js server with its output in a file (a
  :class:`~demo.processes.LoggedProcess`; the tests' Prism uses it too);
  :func:`node_tool` finds an npm binary of the repository.

Node.js 18+ and ``npm install`` (``make install``) at the repository root are needed.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import httpx

from demo.processes import REPO, LoggedProcess
from demo.waiting import wait_until

NODE_BIN = REPO / "node_modules" / ".bin"
ACME_CRM_DIR = Path(__file__).resolve().parent / "acme_crm"
ACME_SERVER_JS = ACME_CRM_DIR / "server.js"
EMPTY_ACME_DB = {"companies": [], "people": [], "tickets": []}
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def node_tool(name: str) -> Path:
    """An npm binary of the repository (``npm install`` puts them in node_modules/.bin)."""
    path = NODE_BIN / name
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `npm install` (or `make install`) at "
                           f"{REPO} first")
    return path


# --------------------------------------------------------------------------- processes


class NodeProcess(LoggedProcess):
    """A Node.js server process whose output goes to ``log_path``, in a session of its own
    (a Ctrl-C in the terminal does not reach it: its owner stops it)."""

    def __init__(self, name: str, command: list[str], log_path: Path,
                 env: dict[str, str] | None = None, cwd: Path = REPO,
                 orphan_dies: bool = False) -> None:
        super().__init__(name, command, log_path, env=env, cwd=cwd, orphan_dies=orphan_dies)

    def start(self) -> None:
        """Start; returns at once (:meth:`wait_for_output` says when it is ready)."""
        if shutil.which("node") is None:
            raise RuntimeError("node is not on PATH: the Acme CRM stand-in needs Node.js 18+")
        self.launch()

    def wait_for_output(self, pattern: str, timeout: float = STARTUP_TIMEOUT) -> re.Match[str]:
        """Block until the output matches ``pattern``; raise ``RuntimeError`` with the
        output's tail if the process exits first, :class:`~demo.waiting.WaitTimedOut`
        if ``timeout`` passes first."""
        regex = re.compile(pattern)
        return wait_until(lambda: regex.search(self.output()), timeout=timeout,
                          interval=0.05, between=self._check_started,
                          what=f"{self.name} to print {pattern!r}", state=self.tail)

    def _check_started(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode} at "
                               f"start:\n{self.tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; idempotent."""
        return super().stop(timeout)


# --------------------------------------------------------------------------- json-server


class JsonServer:
    """json-server serving the Acme CRM on ``host``:``port`` (``port`` 0: a free one).

    ``workdir`` receives its database file (``db_name``: the content it starts from and
    resets to, all collections empty) and its log (``log_name``). ``die_with_parent``:
    the server is sent SIGTERM if this process dies (:func:`demo.processes.die_with_parent`).
    """

    def __init__(self, workdir: Path, api_key: str, *, port: int = 0,
                 host: str = "127.0.0.1", db_name: str = "db.json",
                 log_name: str = "json-server.log", die_with_parent: bool = False) -> None:
        self.workdir = workdir
        self.api_key = api_key
        self.host = host
        self.port = port
        self.db_path = workdir / db_name
        self.log_path = workdir / log_name
        self.url = ""
        self._node = NodeProcess(
            "json-server", ["node", str(ACME_SERVER_JS), str(self.db_path), str(port), host],
            self.log_path, env={"ACME_API_KEY": api_key}, orphan_dies=die_with_parent)
        self._http: httpx.Client | None = None

    @property
    def pid(self) -> int | None:
        return self._node.pid

    @property
    def alive(self) -> bool:
        return self._node.alive

    def start(self) -> JsonServer:
        node_tool("json-server")  # fail early with the npm hint
        self.db_path.write_text(json.dumps(EMPTY_ACME_DB))
        self._node.start()
        found = self._node.wait_for_output(r"listening on (http://\S+)")
        self.url = found.group(1)
        self.port = int(self.url.rsplit(":", 1)[1])
        self._http = httpx.Client(base_url=self.url, timeout=10.0,
                                  headers={"X-Api-Key": self.api_key})
        self.state()  # answers
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        self._node.stop()

    def tail(self, lines: int = 40) -> str:
        return self._node.tail(lines)

    @property
    def http(self) -> httpx.Client:
        assert self._http is not None, "json-server is not started"
        return self._http

    def reset(self) -> None:
        """Empty every collection and forget idempotency keys (ids keep growing)."""
        self.http.post("/__admin/reset").raise_for_status()

    def state(self) -> dict[str, list[dict[str, Any]]]:
        """The whole database, read directly (json-server's ``GET /db``)."""
        response = self.http.get("/db")
        response.raise_for_status()
        return response.json()

    def collection(self, name: str) -> list[dict[str, Any]]:
        return self.state()[name]
