"""The demo, step by step: set up, start, seed, wait, change in the BSS, change in the
CRM and pull, report, keep running, stop.

:class:`Demo` tells the story; the stack it runs on — database, vhost, migrations,
topology, the Acme CRM stand-in, the sandbox BSS, the services — is the harness the
end-to-end tests use too (:class:`demo.stack.Stack`). :meth:`Demo.stop` stops every
process (in the order that lets in-flight work finish: puller, pusher, dispatcher,
sandbox, CRM) whatever happened before, and is what Ctrl-C, SIGTERM and SIGHUP lead to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from demo.console import Console
from demo.processes import LoggedSandbox, run
from demo.report import Report
from demo.stack import BOTH_WAYS, Stack, StackConfig
from demo.systems import ENTITIES, INSTANCE, ORG, Bss, Crm, EntitySync, compare
from demo.thirdparty import REPO, JsonServer
from demo.waiting import WaitTimedOut, wait_until
from shared.messaging.management import AmqpUrl

T = TypeVar("T")
DEMO_DIR = Path(__file__).resolve().parent
INSTALLATION = DEMO_DIR / "installation.json"
DEFAULT_DATABASE = "bss_sync_demo"
DEFAULT_VHOST = "bss-sync-demo"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ACME_CRM_API_KEY = "d3m0-k3y-4b9e1c7f20a6"
#: A short retry ladder: a record whose parent is not linked yet is retried within seconds.
RETRY_DELAYS = (1, 2, 5, 30)
UPDATES = 3  # accounts renamed after the first sync
DELETES = 1  # accounts deleted after the first sync
#: What the demo appends to the name of the CRM company it edits.
CRM_EDIT = " (edited in the CRM)"
#: The final outcomes of the puller's audit rows (the others: retrying).
PULL_SETTLED = ("created", "updated", "deleted", "unchanged", "skipped", "dead")


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
        base_amqp_url = os.environ.get("AMQP_URL") or DEFAULT_AMQP_URL
        self.amqp_user = AmqpUrl.parse(base_amqp_url).user
        self.stack = Stack(StackConfig(
            amqp_url=base_amqp_url,
            database_url=os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
            database=options.database, vhost=options.vhost, workdir=options.workdir,
            management_url=os.environ.get("MANAGEMENT_URL"), recreate=True,
            retry_delays=RETRY_DELAYS, bss_port=options.bss_port, crm_port=options.crm_port,
            crm_api_key=ACME_CRM_API_KEY, service_env={"ACME_CRM_API_KEY": ACME_CRM_API_KEY},
            orphans_die=True))
        self.database_url = self.stack.database_url
        self.amqp_url = self.stack.amqp_url
        self.management_url = self.stack.management_url
        self.bss: Bss | None = None
        self.crm: Crm | None = None
        self.changes: dict[str, Any] = {}
        self.pulled: dict[str, Any] = {}
        self.reported = False
        self.pid_file: Path | None = None

    @property
    def sandbox(self) -> LoggedSandbox | None:
        return self.stack.sandbox

    @property
    def crm_server(self) -> JsonServer | None:
        return self.stack.crm

    def env(self) -> dict[str, str]:
        """What the services and the CLI are configured with (docs/architecture.md §7)."""
        return self.stack.env

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
            self.change_in_crm_and_pull()
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
        except (DemoFailed, RuntimeError, WaitTimedOut) as exc:  # a process or command failed
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
        out, stack = self.out, self.stack
        out.heading("bss-sync demo")
        out.line(f"BSS (sandbox) --events--> RabbitMQ --> dispatcher --> pusher --> Acme CRM "
                 f"(json-server), and back: bss-sync pull --> puller --> BSS; "
                 f"organization {ORG}, instance {INSTANCE}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / ".gitignore").write_text("*\n")
        self.claim_workdir()
        for name in ("*.log", "installation.json", "sample-account.json", "acme-crm-db.json"):
            for old in self.workdir.glob(name):  # the previous run's
                old.unlink()
        problems = stack.problems()
        if problems:
            raise DemoFailed("cannot start:\n  - " + "\n  - ".join(problems))
        out.step(f"PostgreSQL, RabbitMQ (management API {self.management_url}) and "
                 "Node.js are there")
        fresh = "dropped and recreated (each run starts fresh)"
        existed = stack.create_database()
        out.step(f"PostgreSQL database {self.options.database}: "
                 f"{fresh if existed else 'created'}")
        existed = stack.create_vhost()
        out.step(f"RabbitMQ vhost {self.options.vhost}: "
                 f"{fresh.replace('dropped', 'deleted') if existed else 'created'}")
        stack.migrate()
        out.step("bss-sync db upgrade: bss-sync's tables created")
        stack.declare_topology()
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

    # ------------------------------------------------------------------ processes

    def start(self) -> None:
        out, stack = self.out, self.stack
        crm_server = stack.start_crm(port_or_any(self.options.crm_port, out, "the Acme CRM"))
        self.crm = Crm(crm_server.url, ACME_CRM_API_KEY)
        out.step(f"Acme CRM stand-in (json-server + demo/acme_crm/middleware.js) on "
                 f"{crm_server.url}   log: {self.rel(crm_server.log_path)}")

        self.apply_installation()

        sandbox = stack.start_sandbox(port_or_any(self.options.bss_port, out,
                                                  "the sandbox BSS"))
        self.bss = Bss(sandbox.url, ORG)
        out.step(f"sandbox BSS (python -m sandbox serve) on {sandbox.url}   "
                 f"log: {self.rel(sandbox.log_path)}")

        for name in BOTH_WAYS:
            try:
                service = stack.start_service(name)
            except (RuntimeError, WaitTimedOut) as exc:
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
        result = self.stack.cli(["apply", str(path)])
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

    def change_in_crm_and_pull(self) -> None:
        """Edit one company in the CRM, run a pull discovery, wait until the BSS has it."""
        out = self.out
        assert self.bss is not None and self.crm is not None
        out.heading("Changing a record in the CRM, then pulling")
        renamed = set(self.changes.get("updated", {}))
        company = next(c for c in self.crm.companies()
                       if c.get("bssId") and c["bssId"] not in renamed)
        name = company["name"] + CRM_EDIT
        self.crm.patch("companies", company["id"], {"name": name})
        out.step(f"PATCH {self.crm.url}/companies/{company['id']}: name -> {name!r} (the CRM's "
                 f"own API, as a CRM user's edit)")
        started = time.monotonic()
        command = ["pull", "--instance", INSTANCE, "--wait"]
        out.step(f"bss-sync {' '.join(command)}: list what changed in the CRM (every object "
                 "the instance may pull: accounts) and publish it to the puller")
        result = self.stack.cli(command)
        out.block(result.stdout.strip(), indent="          ")
        run = next(line.split()[1].rstrip(":") for line in result.stdout.splitlines()
                   if line.startswith("run "))
        published = sum(int(line.split(" published", 1)[0].rsplit(" ", 1)[1])
                        for line in result.stdout.splitlines() if " published of " in line)
        account_id = company["bssId"]
        self.pulled = {"company": company["id"], "account": account_id, "name": name,
                       "run": run, "published": published}
        self.wait_for("the CRM edit in the BSS and every pulled record settled",
                      self.pull_synced, self.pull_progress)
        out.done(f"the CRM edit is in the BSS: account {account_id} is named {name!r} "
                 f"({time.monotonic() - started:.1f} s after the edit)")

    # -- what is waited for

    def pull_outcomes(self) -> Counter[str]:
        """The puller's final outcomes for the messages of the demo's pull run."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT outcome FROM audit_log WHERE service = 'puller' AND run_id = %s",
                (self.pulled["run"],)).fetchall()
        return Counter(outcome for (outcome,) in rows if outcome in PULL_SETTLED)

    def pull_synced(self) -> bool:
        assert self.bss is not None
        named = self.bss.get("account", self.pulled["account"]).get("name")
        return (named == self.pulled["name"]
                and sum(self.pull_outcomes().values()) >= self.pulled["published"])

    def pull_progress(self) -> str:
        assert self.bss is not None
        named = self.bss.get("account", self.pulled["account"]).get("name")
        outcomes = ", ".join(f"{n} {o}" for o, n in sorted(self.pull_outcomes().items()))
        return (f"BSS account named {named!r}; pulled records settled: "
                f"{outcomes or 'none yet'} of {self.pulled['published']}")


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
        def between() -> None:
            self.check_processes()
            self.out.progress(progress())

        try:
            wait_until(done, timeout=self.options.timeout, what=what, state=progress,
                       interval=0.25, between=between)
        except WaitTimedOut as exc:
            raise DemoFailed(f"{exc}.\n{self.problems()}") from None

    def check_processes(self) -> None:
        try:
            self.stack.check_processes()
        except RuntimeError as exc:
            raise DemoFailed(str(exc)) from None

    def problems(self) -> str:
        """What went wrong, as the audit log says (for a failed wait)."""
        result = self.stack.cli(["audit", "search", "--org", ORG, "--outcome",
                                 "retrying,failed,dead", "--limit", "10"], check=False)
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
        """Stop everything started, puller and pusher first (in-flight work finishes); never
        raises."""
        stack = self.stack
        running = stack.running
        if running:
            self.out.step("stopping the puller, the pusher, the dispatcher, the sandbox BSS "
                          "and the Acme CRM stand-in")
        for closer in (self.bss, self.crm):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()
        stack.stop()
        if running:
            self.out.step("all processes stopped")
        if self.options.drop_at_exit:
            stack.drop()
            self.out.step(f"dropped: database {self.options.database} and vhost "
                          f"{self.options.vhost}")
        elif stack.created_database:
            self.out.step(f"kept: database {self.options.database} and vhost "
                          f"{self.options.vhost} (recreated on the next run)")
        stack.close()
        if self.pid_file is not None:
            with contextlib.suppress(OSError):
                self.pid_file.unlink()

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
