"""Scheduled runs end to end, real processes: two dispatcher replicas running the
schedules on an injected clock (``CLOCK_FILE``), the pusher and the puller, the sandbox
BSS and json-server as the Acme CRM.

Two organizations, one instance each, on different schedules (an organization-level
cron in UTC, an instance-level cron in Europe/Paris). The clock is moved past each
slot in turn: each instance's run happens once although two dispatchers race for it,
pushes what only a run can push (BSS records whose events were dropped), then pulls
what changed in the CRM — and every push of a run is settled before its first pull.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from demo.processes import LoggedProcess, Service, bss_sync
from shared.messaging.topology import DISPATCHER, PULLER, PUSHER
from shared.runtime.registry import DEFAULT_TTL
from tests.e2e.conftest import make_clocked_stack
from tests.e2e.records import account_bodies
from tests.e2e.stack import ClockedWorld, Tenant, TestStack
from tests.e2e.two_way import TWO_WAY
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.e2e

Record = dict[str, Any]
DISPATCHER_QUEUE = "dispatcher.events"
#: The daily redelivery's slot: 40 minutes after the module starts, after the runs'.
REDELIVERY_SLOT = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=40)


class World(ClockedWorld):
    def __init__(self, stack: TestStack, clock: Path, replica: Service) -> None:
        super().__init__(stack, clock)
        self.replica = replica

    def runs(self, instance_id: str) -> list[Record]:
        with self.db() as conn:
            return conn.execute("SELECT * FROM runs WHERE instance_id = %s ORDER BY started_at",
                                (instance_id,)).fetchall()

    def finished_run(self, instance_id: str) -> Record:
        def done() -> Record | None:
            runs = self.runs(instance_id)
            return runs[0] if runs and runs[0]["status"] != "running" else None
        return wait_until(done, timeout=120, what=f"the run of {instance_id} to finish",
                          state=lambda: str(self.runs(instance_id)))

    def run_rows(self, run_id: Any, service: str) -> list[Record]:
        with self.db() as conn:
            return conn.execute(
                "SELECT at, entity, record_id, external_id, outcome, details FROM audit_log"
                " WHERE run_id = %s AND service = %s AND outcome <> 'retrying' ORDER BY at",
                (str(run_id), service)).fetchall()


@pytest.fixture(scope="module")
def world(request: pytest.FixtureRequest) -> World:
    stack, clock = make_clocked_stack(request, cron_at(REDELIVERY_SLOT, "UTC"),
                                      (DISPATCHER, PUSHER, PULLER),
                                      {"SCHEDULE_INTERVAL": "0.3", "RUN_PUSH_TIMEOUT": "60"})
    logs = stack.workdir / "replica"
    logs.mkdir()
    replica = Service(DISPATCHER, stack.env, logs)
    request.addfinalizer(lambda: LoggedProcess.stop(replica))
    return World(stack, clock, replica.start())


def cron_at(instant: datetime, zone: str) -> str:
    wall = instant.astimezone(ZoneInfo(zone))
    return f"{wall.minute} {wall.hour} * * *"


def apply(world: World, slot_a: datetime, slot_b: datetime) -> tuple[Tenant, Tenant]:
    """Two organizations in one installation file: A's schedule at organization level
    (UTC), B's at instance level (Europe/Paris); the installation's default is 23:00."""
    suffix = uuid.uuid4().hex[:4]
    tenants = (Tenant(f"org-a-{suffix}", f"inst-a-{suffix}", "acme-crm"),
               Tenant(f"org-b-{suffix}", f"inst-b-{suffix}", "acme-crm"))
    crm = world.stack.crm
    assert crm is not None

    def instance(tenant: Tenant) -> Record:
        return {"id": tenant.instance_id, "name": tenant.instance_id, "connector": "acme-crm",
                "server": crm.url, "credentials": {"apiKey": "env:ACME_KEY"},
                "permissions": {"account": TWO_WAY, "contact": TWO_WAY}}

    b_instance = instance(tenants[1])
    b_instance["schedule"] = {"cron": cron_at(slot_b, "Europe/Paris"),
                              "timezone": "Europe/Paris"}
    installation = {
        "timezone": "UTC", "schedule": "0 23 * * *",
        "connectors": [c.entry() for c in world.stack.connectors.values()],
        "organizations": [
            {"id": tenants[0].org_id, "name": "A", "schedule": cron_at(slot_a, "UTC"),
             "instances": [instance(tenants[0])]},
            {"id": tenants[1].org_id, "name": "B", "instances": [b_instance]}]}
    path = world.stack.workdir / f"installation-{suffix}.json"
    path.write_text(json.dumps(installation))
    world.stack.cli(["apply", str(path)])
    return tenants


def apply_one(world: World, tenant: Tenant, key_env: str,
              permissions: dict[str, Any]) -> None:
    """An installation file of one organization with one instance of Acme, its API key
    read from ``key_env``, applied."""
    crm = world.stack.crm
    assert crm is not None
    installation = {"timezone": "UTC", "connectors": [
        c.entry() for c in world.stack.connectors.values()], "organizations": [{
            "id": tenant.org_id, "name": tenant.org_id, "instances": [{
                "id": tenant.instance_id, "name": tenant.instance_id, "connector": "acme-crm",
                "server": crm.url, "credentials": {"apiKey": f"env:{key_env}"},
                "permissions": permissions}]}]}
    path = world.stack.workdir / f"installation-{tenant.instance_id}-{key_env}.json"
    path.write_text(json.dumps(installation))
    world.stack.cli(["apply", str(path)])


def test_each_instance_runs_once_on_its_schedule_pushing_then_pulling(world: World) -> None:
    stack = world.stack
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    slot_a, slot_b = now + timedelta(minutes=10), now + timedelta(minutes=20)
    world.set_clock(now)
    a, b = apply(world, slot_a, slot_b)

    # BSS records whose events never reach the dispatcher: only a run can push them
    dispatcher = stack.services[DISPATCHER]
    LoggedProcess.stop(world.replica)  # Service.stop would wait for a queue without consumer
    dispatcher.stop()
    accounts = {t.org_id: stack.bss.create_many(t.org_id, "account",
                                                account_bodies(3, seed=hash(t.org_id) % 1000))
                for t in (a, b)}
    wait_until(lambda: len(stack.dead_letters(DISPATCHER_QUEUE)) == 6, timeout=30,
               what="the six events in dispatcher.events (the BSS relays them)")
    stack.purge(DISPATCHER_QUEUE)
    dispatcher.start()
    world.replica.start()
    crm = stack.crm
    assert crm is not None
    company = crm.http.post("/companies", json={
        "name": "Globex", "accountNumber": f"G-{a.org_id}", "email": "ap@globex.example",
        "employees": 40, "billingAddress": {"street": "1 Cypress Creek", "city": "Cypress",
                                            "postalCode": "77429", "country": "US"}}).json()

    world.set_clock(slot_a + timedelta(seconds=5))
    run_a = world.finished_run(a.instance_id)
    assert (run_a["status"], run_a["trigger"], run_a["scheduled_for"]) == (
        "completed", "schedule", slot_a), run_a
    pushes = world.run_rows(run_a["id"], "pusher")
    assert sorted(r["record_id"] for r in pushes if r["outcome"] == "created") == sorted(
        x["id"] for x in accounts[a.org_id])
    pulls = world.run_rows(run_a["id"], "puller")
    assert str(company["id"]) in {r["external_id"] for r in pulls if r["outcome"] == "created"}
    assert max(r["at"] for r in pushes) < run_a["push_settled_at"] <= min(
        r["at"] for r in pulls)
    assert world.runs(b.instance_id) == []  # B's slot has not come

    world.set_clock(slot_b + timedelta(seconds=5))
    run_b = world.finished_run(b.instance_id)
    assert (run_b["status"], run_b["scheduled_for"]) == ("completed", slot_b), run_b
    pushes_b = world.run_rows(run_b["id"], "pusher")
    assert sorted(r["record_id"] for r in pushes_b if r["outcome"] == "created") == sorted(
        x["id"] for x in accounts[b.org_id])
    pulls_b = world.run_rows(run_b["id"], "puller")
    assert pulls_b and max(r["at"] for r in pushes_b) < min(r["at"] for r in pulls_b)

    # two dispatchers looked at every tick: one run per instance and slot
    assert [r["id"] for r in world.runs(a.instance_id)] == [run_a["id"]]
    assert [r["id"] for r in world.runs(b.instance_id)] == [run_b["id"]]

    listed = [json.loads(line) for line in stack.cli(
        ["runs", "list", "--org", a.org_id, "--json"]).stdout.splitlines()]
    assert [(r["id"], r["status"], r["counts"]["push.queued"]) for r in listed] == [
        (str(run_a["id"]), "completed", 3)]
    shown = stack.cli(["runs", "show", str(run_a["id"])]).stdout
    assert "push       " in shown and "pull       " in shown
    assert any(line.split() == ["push", "account", "created", "3"]
               for line in shown.splitlines()), shown


def test_the_daily_redelivery_runs_once_on_its_cron_and_syncs_what_was_fixed(
        world: World) -> None:
    """An instance given a wrong API key dead-letters an account (Acme answers 401); the
    key is fixed; at the redelivery's slot (``REDELIVERY_SCHEDULE``) one of the two
    dispatchers moves the letter back, and the pusher creates the company: ``trigger``
    redelivery in its audit row, one ``job_slots`` row, one move."""
    stack = world.stack
    suffix = uuid.uuid4().hex[:4]
    tenant = Tenant(f"org-c-{suffix}", f"inst-c-{suffix}", "acme-crm")
    crm = stack.crm
    assert crm is not None

    def apply_with(key_env: str) -> None:
        apply_one(world, tenant, key_env, {"account": TWO_WAY})

    apply_with("ACME_BAD_KEY")
    [account] = stack.bss.create_many(tenant.org_id, "account", account_bodies(1, seed=7))
    [dead] = wait_until(lambda: [d for d in stack.dead_letters()
                                 if d["properties"]["headers"]["x-record-id"] == account["id"]],
                        timeout=60, what="the account's dead letter",
                        state=lambda: stack.audit.summary(tenant.instance_id))
    apply_with("ACME_KEY")
    time.sleep(DEFAULT_TTL + 1)  # the pusher re-reads a changed instance within its TTL

    world.set_clock(REDELIVERY_SLOT + timedelta(seconds=5))
    rows = wait_until(lambda: [r for r in stack.audit.rows(tenant.instance_id,
                                                           record_id=account["id"])
                               if r["outcome"] == "created"],
                      timeout=90, what="the redelivered account created in Acme",
                      state=lambda: stack.audit.summary(tenant.instance_id))
    assert [r["details"]["trigger"] for r in rows] == ["redelivery"]
    moved = stack.audit.rows(tenant.instance_id, record_id=account["id"], service="dlq")
    assert [r["details"]["operation"] for r in moved] == ["moved"]
    with world.db() as conn:
        slots = conn.execute("SELECT slot, summary, error FROM job_slots"
                             " WHERE job = 'redelivery'").fetchall()
    assert [(s["slot"], s["error"]) for s in slots] == [(REDELIVERY_SLOT, None)]
    assert slots[0]["summary"]["moved"] >= 1
    assert [d for d in stack.dead_letters()
            if d["properties"]["headers"]["x-record-id"] == account["id"]] == []
    assert dead["properties"]["headers"]["x-error-class"]


def test_a_run_killed_mid_way_is_closed_and_the_next_run_covers_it(world: World) -> None:
    """A manual run (``python -m services.dispatcher.run``, what ``bss-sync sync`` starts)
    queues 600 accounts whose events were dropped, then is SIGKILLed while it waits for
    them to settle (the pusher is stopped). ``bss-sync sync --wait`` closes it as
    interrupted and runs again: every account is in Acme exactly once."""
    stack = world.stack
    suffix = uuid.uuid4().hex[:4]
    tenant = Tenant(f"org-d-{suffix}", f"inst-d-{suffix}", "acme-crm")
    crm = stack.crm
    assert crm is not None
    apply_one(world, tenant, "ACME_KEY", {"account": {"push": ["create", "update", "delete"]}})

    dispatcher, pusher = stack.services[DISPATCHER], stack.services[PUSHER]
    LoggedProcess.stop(world.replica)
    dispatcher.stop()
    accounts = stack.bss.create_many(tenant.org_id, "account", account_bodies(600, seed=11))
    wait_until(lambda: len(stack.dead_letters(DISPATCHER_QUEUE)) == 600, timeout=60,
               what="the 600 events in dispatcher.events")
    stack.purge(DISPATCHER_QUEUE)
    dispatcher.start()
    world.replica.start()
    pusher.stop()

    run_id = str(uuid.uuid4())
    killed = subprocess.Popen(
        [sys.executable, "-m", "services.dispatcher.run", "--instance", tenant.instance_id,
         "--run-id", run_id], env=stack.env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: any(r["counts"].get("push.queued") == 600
                               for r in world.runs(tenant.instance_id)),
                   timeout=60, what="the run to queue the 600 accounts",
                   state=lambda: str(world.runs(tenant.instance_id)))
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
    pusher.start()

    done = stack.cli(["sync", "--instance", tenant.instance_id, "--direction", "push",
                      "--wait"])
    runs = {str(r["id"]): r for r in world.runs(tenant.instance_id)}
    assert runs[run_id]["status"] == "failed" and "interrupted" in runs[run_id]["error"]
    [second] = [r for i, r in runs.items() if i != run_id]
    assert second["status"] == "completed", (second, done.stdout, done.stderr)
    assert f"run {second['id']} of {tenant.instance_id}: completed" in done.stdout

    ids = {a["id"] for a in accounts}
    in_acme = [c["bssId"] for c in crm.collection("companies") if c.get("bssId") in ids]
    assert sorted(in_acme) == sorted(ids)  # each once
    created = stack.audit.rows(tenant.instance_id, outcome="created")
    assert sorted(r["record_id"] for r in created) == sorted(ids)


def test_a_run_pushes_what_failed_before_and_audits_a_settling_timeout(world: World) -> None:
    """Two accounts dead-lettered (a wrong API key), then a run moves the push watermark
    past them (they fail again). With the key fixed, the next run lists only the later
    one (the watermark is inclusive) and finds the earlier one in its "failed before"
    pass: both are queued, and created once the pusher is back. That run, its pushes
    unable to settle (the pusher stopped), gives up after ``RUN_PUSH_TIMEOUT`` with a
    ``RunTimeout`` audit row and says so."""
    stack = world.stack
    suffix = uuid.uuid4().hex[:4]
    tenant = Tenant(f"org-e-{suffix}", f"inst-e-{suffix}", "acme-crm")
    crm = stack.crm
    assert crm is not None

    def apply_with(key_env: str) -> None:
        apply_one(world, tenant, key_env, {"account": {"push": ["create", "update"]}})

    def sync(**env: str) -> Any:
        return bss_sync(["sync", "--instance", tenant.instance_id, "--direction", "push",
                         "--wait"], {**stack.env, **env}, check=False)

    apply_with("ACME_BAD_KEY")
    earlier, later = (stack.bss.create(tenant.org_id, "account", body)
                      for body in account_bodies(2, seed=5))
    wait_until(lambda: len(stack.audit.rows(tenant.instance_id, outcome="dead")) == 2,
               timeout=60, what="both accounts dead-lettered",
               state=lambda: stack.audit.summary(tenant.instance_id))
    assert sync().returncode == 0  # the watermark moves past both (they die again)
    stack.purge("pusher.dead")  # no redelivery will bring them back: only a run can
    apply_with("ACME_KEY")
    time.sleep(DEFAULT_TTL + 1)  # the pusher re-reads a changed instance within its TTL

    pusher = stack.services[PUSHER]
    pusher.stop()
    try:
        timed_out = sync(RUN_PUSH_TIMEOUT="2")
    finally:
        pusher.start()
    assert timed_out.returncode == 1, timed_out.stdout + timed_out.stderr
    run = world.runs(tenant.instance_id)[-1]
    assert run["status"] == "failed" and "not settled after 2 s" in run["error"]
    assert (run["counts"]["push.queued"], run["counts"]["push.retried"]) == (2, 1), run
    with world.db() as conn:
        [row] = conn.execute("SELECT error_class, details FROM audit_log WHERE run_id = %s"
                             " AND service = 'dispatcher' AND action = 'run'",
                             (str(run["id"]),)).fetchall()
    assert row["error_class"] == "RunTimeout" and row["details"]["expected"] == 2

    created = wait_until(lambda: (lambda rows: rows if len(rows) == 2 else None)(
        world.run_rows(run["id"], "pusher")), timeout=60,
        what="the timed-out run's pushes, done once the pusher is back")
    assert sorted((r["record_id"], r["outcome"]) for r in created) == sorted(
        [(earlier["id"], "created"), (later["id"], "created")])
    assert len([c for c in crm.collection("companies")
                if c.get("bssId") in (earlier["id"], later["id"])]) == 2
