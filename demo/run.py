"""The demo, step by step: set up, start, seed, wait, change, report, keep running, stop.

:class:`Demo` owns every process it starts; :meth:`Demo.stop` stops them all (in the
order that lets in-flight work finish: pusher, dispatcher, sandbox, CRM) whatever
happened before, and is what Ctrl-C, SIGTERM and SIGHUP lead to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from kombu import Connection

from demo.console import Console
from demo.processes import LoggedSandbox, Service, bss_sync, run
from demo.report import Report
from demo.systems import ENTITIES, INSTANCE, ORG, Bss, Crm, EntitySync, compare
from demo.thirdparty import NODE_BIN, REPO, JsonServer
from sandbox.settings import SandboxSettings
from shared.messaging.management import AmqpUrl, ManagementClient, management_url_for
from shared.storage.db import quote_ident, redact_url, url_with_database

T = TypeVar("T")
DEMO_DIR = Path(__file__).resolve().parent
INSTALLATION = DEMO_DIR / "installation.json"
DEFAULT_DATABASE = "bss_sync_demo"
DEFAULT_VHOST = "bss-sync-demo"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ACME_CRM_API_KEY = "demo-acme-crm-key"
#: A short retry ladder: a record whose parent is not linked yet is retried within seconds.
RETRY_DELAYS = (1, 2, 5, 30)
UPDATES = 3  # accounts renamed after the first sync
DELETES = 1  # accounts deleted after the first sync


class Stopped(Exception):
    """SIGTERM or SIGHUP arrived: stop like Ctrl-C."""


class DemoFailed(Exception):
    """Something the user must see went wrong; the message says what and where to look."""


@dataclasses.dataclass(frozen=True)
class Options:
    count: int = 20
    database: str = DEFAULT_DATABASE
    vhost: str = DEFAULT_VHOST
    wait: bool = True
    bss_port: int = 8080
    crm_port: int = 3000
    timeout: float = 120.0
    workdir: Path = REPO / ".demo"
    drop_at_exit: bool = False


class Demo:
    def __init__(self, options: Options, console: Console | None = None) -> None:
        self.options = options
        self.out = console or Console()
        self.workdir = options.workdir
        self.base_amqp_url = os.environ.get("AMQP_URL") or DEFAULT_AMQP_URL
        self.base_database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
        self.database_url = url_with_database(self.base_database_url, options.database)
        self.amqp_url = AmqpUrl.parse(self.base_amqp_url).with_vhost(options.vhost)
        self.amqp_user = AmqpUrl.parse(self.base_amqp_url).user
        self.management_url = management_url_for(self.base_amqp_url,
                                                 os.environ.get("MANAGEMENT_URL"))
        self.management: ManagementClient | None = None
        self.crm_server: JsonServer | None = None
        self.sandbox: LoggedSandbox | None = None
        self.services: dict[str, Service] = {}
        self.bss: Bss | None = None
        self.crm: Crm | None = None
        self.created_database = False
        self.created_vhost = False
        self.changes: dict[str, Any] = {}
        self.reported = False
        self.pid_file: Path | None = None

    # ------------------------------------------------------------------ the whole run

    def run(self) -> int:
        """Everything; the exit code. Stops every process it started, whatever happens."""
        handlers = install_stop_signals()
        code = 0
        try:
            self.setup()
            self.start()
            self.seed_and_sync()
            self.change_and_sync()
            Report(self).print()
            self.reported = True
            if self.options.wait:
                self.keep_running()
        except KeyboardInterrupt:
            self.out.line()
            self.out.step("Ctrl-C: stopping")
            code = 0 if self.reported else 130
        except Stopped as exc:
            self.out.line()
            self.out.step(f"{exc}: stopping")
            code = 0 if self.reported else 143
        except (DemoFailed, RuntimeError) as exc:  # RuntimeError: a process or command failed
            self.out.line()
            self.out.line(f"DEMO FAILED: {exc}")
            code = 1
        finally:
            with shielded_from_signals(self.out):
                self.stop()
            restore_signals(handlers)
        return code

    # ------------------------------------------------------------------ set-up

    def setup(self) -> None:
        out = self.out
        out.heading("bss-sync demo")
        out.line(f"BSS (sandbox) --events--> RabbitMQ --> dispatcher --> pusher --> Acme CRM "
                 f"(json-server); organization {ORG}, instance {INSTANCE}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / ".gitignore").write_text("*\n")
        self.claim_workdir()
        for name in ("*.log", "installation.json", "sample-account.json", "acme-crm-db.json"):
            for old in self.workdir.glob(name):  # the previous run's
                old.unlink()
        self.check_prerequisites()
        self.recreate_database()
        self.recreate_vhost()
        bss_sync(["db", "upgrade"], self.env())
        out.step("bss-sync db upgrade: bss-sync's tables created")
        bss_sync(["topology", "declare"], self.env())
        out.step(f"bss-sync topology declare: exchanges and queues declared in vhost "
                 f"{self.options.vhost}")

    def claim_workdir(self) -> None:
        """One demo per work directory: a second one would drop the first one's database."""
        pid_file = self.workdir / "demo.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            if pid != os.getpid() and _is_demo(pid):
                raise DemoFailed(f"another demo is running (pid {pid}, {self.rel(pid_file)}): "
                                 f"stop it first (Ctrl-C in its terminal, or `kill {pid}`)")
        pid_file.write_text(f"{os.getpid()}\n")
        self.pid_file = pid_file

    def check_prerequisites(self) -> None:
        problems = []
        try:
            psycopg.connect(self.base_database_url, connect_timeout=5).close()
        except psycopg.Error as exc:
            problems.append(f"PostgreSQL is not reachable at {redact_url(self.base_database_url)}"
                            f" ({first_line(exc)}): start it, or set DATABASE_URL")
        try:
            with Connection(self.base_amqp_url, connect_timeout=5) as conn:
                conn.ensure_connection(max_retries=1, timeout=5)
        except Exception as exc:
            problems.append(f"RabbitMQ is not reachable at {redact_url(self.base_amqp_url)} "
                            f"({first_line(exc)}): start it, or set AMQP_URL")
        else:
            self.management = ManagementClient.for_amqp_url(self.base_amqp_url,
                                                            os.environ.get("MANAGEMENT_URL"))
            try:
                self.management.overview()
            except Exception as exc:
                problems.append(f"the RabbitMQ management API is not reachable at "
                                f"{self.management_url} ({first_line(exc)}): "
                                "`rabbitmq-plugins enable rabbitmq_management`")
        if shutil.which("node") is None:
            problems.append("node is not on PATH: the Acme CRM stand-in needs Node.js 18+")
        elif not (NODE_BIN / "json-server").exists():
            problems.append(f"{NODE_BIN / 'json-server'} is missing: run `make install` "
                            "(or `npm ci`) at the repository root")
        if problems:
            raise DemoFailed("cannot start:\n  - " + "\n  - ".join(problems))
        self.out.step(f"PostgreSQL, RabbitMQ (management API {self.management_url}) and "
                      "Node.js are there")

    def recreate_database(self) -> None:
        name = self.options.database
        with psycopg.connect(self.base_database_url, autocommit=True) as conn:
            existed = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                   (name,)).fetchone() is not None
            conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {quote_ident(name)}")
        self.created_database = True
        what = "dropped and recreated (each run starts fresh)" if existed else "created"
        self.out.step(f"PostgreSQL database {name}: {what}")

    def recreate_vhost(self) -> None:
        assert self.management is not None
        vhost = self.options.vhost
        existed = vhost in self.management.vhosts()
        if existed:
            self.management.delete_vhost(vhost)
        self.management.create_vhost(vhost)
        self.created_vhost = True
        what = "deleted and recreated (each run starts fresh)" if existed else "created"
        self.out.step(f"RabbitMQ vhost {vhost}: {what}")

    def env(self) -> dict[str, str]:
        """What the services and the CLI are configured with (docs/architecture.md §7)."""
        return {
            "AMQP_URL": self.amqp_url,
            "DATABASE_URL": self.database_url,
            "DB_SCHEMA": "public",
            "BSS_API_URL": self.sandbox.url if self.sandbox else "",
            "ACME_CRM_API_KEY": ACME_CRM_API_KEY,
            "RETRY_DELAYS": json.dumps(list(RETRY_DELAYS)),
            "LOG_FORMAT": "json",  # one JSON object per line in .demo/*.log (try jq)
            "LOG_LEVEL": "INFO",
            "SHUTDOWN_TIMEOUT": "10",
        }

    # ------------------------------------------------------------------ processes

    def start(self) -> None:
        out = self.out
        crm_port = port_or_any(self.options.crm_port, out, "the Acme CRM")
        self.crm_server = JsonServer(self.workdir, ACME_CRM_API_KEY, port=crm_port,
                                     db_name="acme-crm-db.json", log_name="acme-crm.log",
                                     die_with_parent=True)
        self.crm_server.start()  # assigned first: stop() stops it even if this is interrupted
        self.crm = Crm(self.crm_server.url, ACME_CRM_API_KEY)
        out.step(f"Acme CRM stand-in (json-server + demo/acme_crm/middleware.js) on "
                 f"{self.crm_server.url}   log: {self.rel(self.crm_server.log_path)}")

        self.apply_installation()

        bss_port = port_or_any(self.options.bss_port, out, "the sandbox BSS")
        settings = SandboxSettings(database_url=self.database_url, schema="sandbox",
                                   amqp_url=self.amqp_url, poll_interval=0.2)
        self.sandbox = LoggedSandbox(settings, self.workdir / "sandbox.log",
                                     port=bss_port or None)
        self.sandbox.start()
        self.bss = Bss(self.sandbox.url, ORG)
        out.step(f"sandbox BSS (python -m sandbox serve) on {self.sandbox.url}   "
                 f"log: {self.rel(self.sandbox.log_path)}")

        for name in ("dispatcher", "pusher"):
            service = Service(name, self.env(), self.workdir)
            self.services[name] = service
            try:
                service.start()
            except RuntimeError as exc:
                raise DemoFailed(str(exc)) from None
            out.step(f"{name} (python -m services.{name}) consuming its queue   "
                     f"log: {self.rel(service.log_path)}")

    def apply_installation(self) -> None:
        """Apply ``demo/installation.json`` — or, when the CRM is not where it says, an
        effective copy under the work directory pointing at the CRM actually started."""
        assert self.crm_server is not None
        document = json.loads(INSTALLATION.read_text())
        instance = document["organizations"][0]["instances"][0]
        path = INSTALLATION
        if instance["server"] != self.crm_server.url:
            instance["server"] = self.crm_server.url
            for connector in document["connectors"]:
                specs = connector["spec"] if isinstance(connector["spec"], list) \
                    else [connector["spec"]]
                resolved = [str((DEMO_DIR / spec).resolve()) for spec in specs]
                connector["spec"] = resolved if isinstance(connector["spec"], list) \
                    else resolved[0]
            document["$schema"] = str((DEMO_DIR / document["$schema"]).resolve())
            path = self.workdir / "installation.json"
            path.write_text(json.dumps(document, indent=2) + "\n")
        result = bss_sync(["apply", str(path)], self.env())
        note = "" if path == INSTALLATION else \
            f" (a copy of {self.rel(INSTALLATION)} with the CRM's actual URL)"
        self.out.step(f"bss-sync apply {self.rel(path)}{note}:")
        self.out.block(result.stdout.strip() or "(no output)", indent="          ")

    # ------------------------------------------------------------------ the story

    def seed_and_sync(self) -> None:
        out = self.out
        count = self.options.count
        entities = ",".join(ENTITIES)
        command = [sys.executable, "-m", "sandbox", "seed", "--org", ORG, "--count", str(count),
                   "--entities", entities]
        out.heading("Seeding the BSS")
        out.step(f"python -m sandbox seed --org {ORG} --count {count} --entities {entities}")
        result = run(command, self.env())
        summary = result.stdout.strip().splitlines()
        if summary:
            out.block(summary[-1], indent="          ")
        out.step("each write published an entity-changed event; waiting until every record "
                 "is in the CRM")
        started = time.monotonic()
        self.wait_for("every record in the CRM", self.all_synced, self.sync_progress)
        out.done(f"all {count * len(ENTITIES)} records are in the CRM "
                 f"({time.monotonic() - started:.1f} s after the seed)")

    def change_and_sync(self) -> None:
        out = self.out
        assert self.bss is not None
        out.heading("Changing records in the BSS")
        accounts = sorted(self.bss.records("account"), key=lambda r: r.get("code") or r["id"])
        updated: dict[str, str] = {}
        for record in accounts[:UPDATES]:
            name = f"{record['name']} (renamed by the demo)"
            self.bss.patch("account", record["id"], {"name": name})
            updated[record["id"]] = name
            out.step(f"PATCH account {record['id']}: name -> {name!r}")
        deleted = [record["id"] for record in accounts[UPDATES:UPDATES + DELETES]]
        for record_id in deleted:
            self.bss.delete("account", record_id)
            out.step(f"DELETE account {record_id}")
        self.changes = {"updated": updated, "deleted": deleted}
        started = time.monotonic()
        self.wait_for("the updates and the delete in the CRM", self.changes_synced,
                      self.changes_progress)
        out.done(f"{len(updated)} updates and {len(deleted)} delete are in the CRM "
                 f"({time.monotonic() - started:.1f} s)")

    # -- what is waited for

    def comparison(self) -> list[EntitySync]:
        assert self.bss is not None and self.crm is not None
        return compare(self.bss, self.crm)

    def all_synced(self) -> bool:
        rows = self.comparison()
        return all(row.complete and row.bss == self.options.count for row in rows)

    def sync_progress(self) -> str:
        rows = self.comparison()
        return "in the CRM: " + ", ".join(f"{row.entity} {row.synced}/{row.bss}" for row in rows)

    def changes_synced(self) -> bool:
        assert self.crm is not None
        companies = self.crm.by_bss_id("account")
        renamed = all(companies.get(i, {}).get("name") == n
                      for i, n in self.changes["updated"].items())
        return renamed and not any(i in companies for i in self.changes["deleted"])

    def changes_progress(self) -> str:
        assert self.crm is not None
        companies = self.crm.by_bss_id("account")
        renamed = sum(companies.get(i, {}).get("name") == n
                      for i, n in self.changes["updated"].items())
        gone = sum(i not in companies for i in self.changes["deleted"])
        return (f"in the CRM: {renamed}/{len(self.changes['updated'])} renamed, "
                f"{gone}/{len(self.changes['deleted'])} deleted")

    def wait_for(self, what: str, done: Callable[[], bool], progress: Callable[[], str]) -> None:
        """Poll ``done`` with a deadline, showing ``progress``; check the processes too."""
        deadline = time.monotonic() + self.options.timeout
        while not done():
            self.check_processes()
            if time.monotonic() > deadline:
                raise DemoFailed(f"timed out after {self.options.timeout:g} s waiting for "
                                 f"{what}; {progress()}.\n{self.problems()}")
            self.out.progress(progress())
            time.sleep(0.25)

    def check_processes(self) -> None:
        for name, service in self.services.items():
            if not service.alive:
                raise DemoFailed(f"the {name} exited; its log ({self.rel(service.log_path)}):"
                                 f"\n{service.tail()}")
        if self.sandbox is not None and not self.sandbox.alive:
            raise DemoFailed(f"the sandbox BSS exited; see {self.rel(self.sandbox.log_path)}")
        if self.crm_server is not None and not self.crm_server.alive:
            raise DemoFailed(f"the Acme CRM stand-in exited; see "
                             f"{self.rel(self.crm_server.log_path)}")

    def problems(self) -> str:
        """What went wrong, as the audit log says (for a failed wait)."""
        result = bss_sync(["audit", "search", "--org", ORG, "--outcome",
                           "retrying,failed,dead", "--limit", "10"], self.env(), check=False)
        logs = ", ".join(self.rel(p) for p in sorted(self.workdir.glob("*.log")))
        return (f"Problems in the audit log (bss-sync audit search --org {ORG} --outcome "
                f"retrying,failed,dead):\n{(result.stdout + result.stderr).strip()}\n"
                f"Logs: {logs}")

    # ------------------------------------------------------------------ afterwards

    def keep_running(self) -> None:
        """Until Ctrl-C: show each new audit row as it is written; stop if a process dies."""
        out = self.out
        out.heading("Running: press Ctrl-C to stop everything")
        out.line("New sync activity (the audit log) appears below as it happens.")
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute("SELECT coalesce(max(id), 0) FROM audit_log").fetchone()
            last = int(row[0]) if row else 0
            while True:
                self.check_processes()
                rows = conn.execute(
                    "SELECT id, at, service, entity, action, record_id, external_id, outcome,"
                    " http_status, error_message FROM audit_log WHERE id > %s ORDER BY id",
                    (last,)).fetchall()
                for (row_id, at, service, entity, action, record_id, external_id, outcome,
                     status, error) in rows:
                    last = row_id
                    arrow = f" -> {external_id}" if external_id else ""
                    line = (f"  {at:%H:%M:%S} {service:<10} {entity or '-':<8} "
                            f"{action or '-':<7} {record_id or '-'}{arrow}  {outcome}"
                            f"{f' ({status})' if status else ''}")
                    out.line(line + (f"  {error[:120]}" if error else ""))
                time.sleep(1.0)

    def stop(self) -> None:
        """Stop everything started, pusher first (in-flight work finishes); never raises."""
        started = [name for name, service in self.services.items() if service.process]
        if started or self.sandbox or self.crm_server:
            self.out.step("stopping the pusher, the dispatcher, the sandbox BSS and the "
                          "Acme CRM stand-in")
        for name in ("pusher", "dispatcher"):
            service = self.services.get(name)
            if service is not None:
                with contextlib.suppress(Exception):
                    service.stop()
        for closer in (self.bss, self.crm):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()
        if self.sandbox is not None:
            with contextlib.suppress(Exception):
                self.sandbox.stop()
        if self.crm_server is not None:
            with contextlib.suppress(Exception):
                self.crm_server.stop()
        if started or self.sandbox or self.crm_server:
            self.out.step("all processes stopped")
        if self.options.drop_at_exit:
            self.drop()
        elif self.created_database:
            self.out.step(f"kept: database {self.options.database} and vhost "
                          f"{self.options.vhost} (recreated on the next run)")
        if self.management is not None:
            with contextlib.suppress(Exception):
                self.management.close()
        if self.pid_file is not None:
            with contextlib.suppress(OSError):
                self.pid_file.unlink()

    def drop(self) -> None:
        if self.created_vhost and self.management is not None:
            with contextlib.suppress(Exception):
                self.management.delete_vhost(self.options.vhost)
        if self.created_database:
            with contextlib.suppress(Exception), psycopg.connect(
                    self.base_database_url, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(self.options.database)} "
                             "WITH (FORCE)")
        self.out.step(f"dropped: database {self.options.database} and vhost "
                      f"{self.options.vhost}")

    # ------------------------------------------------------------------ helpers

    def rel(self, path: Path) -> str:
        """``path`` relative to the current directory when it is below it."""
        with contextlib.suppress(ValueError):
            return str(path.resolve().relative_to(Path.cwd()))
        return str(path)

    def shell_env(self, *names: str) -> str:
        values = {"DATABASE_URL": self.database_url, "AMQP_URL": self.amqp_url}
        return " ".join(f"{name}={shlex.quote(values[name])}" for name in names)


# ---------------------------------------------------------------------- module helpers


def _is_demo(pid: int) -> bool:
    """Whether process ``pid`` is alive and runs ``-m demo``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True  # no /proc (macOS): alive is enough
    return b"demo" in cmdline and b"-m" in cmdline


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``port`` now (as servers do, with SO_REUSEADDR: the
    TIME_WAIT connections a previous run left do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_or_any(port: int, out: Console, what: str) -> int:
    """``port`` when free, else 0 (any free port), saying so."""
    if port == 0 or port_free(port):
        return port
    out.step(f"port {port} is taken: {what} gets a free port instead")
    return 0


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signal.Signals(signum).name)


def install_stop_signals() -> dict[int, Any]:
    """SIGTERM and SIGHUP stop the demo as Ctrl-C does, and Ctrl-C (SIGINT) works even
    when the demo was started with it ignored (a background job); the previous handlers."""
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler)}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, _raise_stopped)
    return previous


def restore_signals(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@contextlib.contextmanager
def shielded_from_signals(out: Console) -> Iterator[None]:
    """While stopping: another Ctrl-C or SIGTERM only says to wait (stopping is bounded:
    each process gets a few seconds, then SIGKILL)."""
    def patience(_signum: int, _frame: object) -> None:
        out.line("  (stopping: please wait a few seconds)")

    previous = {sig: signal.signal(sig, patience)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
