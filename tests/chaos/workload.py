"""What the chaos suite writes to the sandbox BSS while faults fly: a seeded plan of
creates, merge patches and deletes (:func:`make_plan`, pure), played at a steady pace
by a few threads (:class:`Writer`).

Every write is retried until it lands, as a careful BSS user would: creates carry an
``Idempotency-Key`` (a create whose answer was lost is not made twice), patches are
absolute values (applying one twice changes nothing), and a delete retried after its
answer was lost accepts the 404. So whatever the faults do to the sandbox — its
process killed, its PostgreSQL connections cut — the BSS ends holding exactly the
plan's records, and the third party must end holding them too.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx

from tests.e2e.records import factory

Record = dict[str, Any]
WRITE_DEADLINE = 90.0  # seconds a write keeps being retried


@dataclasses.dataclass(frozen=True)
class Step:
    """One write: ``op`` (``create``, ``patch``, ``delete``) of ``entity`` number
    ``index`` (its place among that entity's creates); ``body`` for a create or a
    patch; ``parent``: the account index a contact belongs to."""

    op: str
    entity: str
    index: int
    body: Record
    parent: int | None = None


def _account_change(rng: random.Random, n: int) -> Record:
    return rng.choice([
        {"name": f"Renamed account {n}"},
        {"phone": f"+4930{rng.randrange(10**7, 10**8)}"},
        {"email": f"billing{n}-{rng.randrange(1000)}@example.org"},
        {"numberOfEmployees": rng.randrange(1, 5000)},
        {"webSite": f"www.changed-{n}.example"},
    ])


def _contact_change(rng: random.Random, n: int) -> Record:
    return rng.choice([
        {"jobTitle": f"Title {n}"},
        {"phone": f"+3120{rng.randrange(10**7, 10**8)}"},
        {"email": f"person{n}-{rng.randrange(1000)}@example.org"},
        {"lastName": f"Changed{n}"},
    ])


def make_plan(seed: int, accounts: int, contacts: int, patches: int,
              deletes: int) -> list[Step]:
    """The writes, in the order they are played: accounts first, then contacts mixed
    with patches, then more patches and the deletes.

    Account codes are unique to the call. A record is patched or deleted only after
    its create; deleted accounts have no contact.
    """
    rng = random.Random(seed)
    make = factory(seed)
    run = uuid.uuid4().hex[:6].upper()
    steps = []
    for i in range(accounts):
        body = make.account(i)
        body["code"] = f"CHAOS-{run}-{i:05d}"
        steps.append(Step("create", "account", i, body))
    parents = [rng.randrange(accounts) for _ in range(contacts)]
    stub = {"id": "placeholder"}
    later: list[Step] = []
    for j, parent in enumerate(parents):
        body = make.contact(stub)
        body.pop("accountId", None)
        later.append(Step("create", "contact", j, body, parent=parent))
    for k in range(patches):
        if rng.random() < 0.7:
            n = rng.randrange(accounts)
            later.append(Step("patch", "account", n, _account_change(rng, k)))
    rng.shuffle(later)
    tail = [Step("patch", "contact", rng.randrange(contacts), _contact_change(rng, k))
            for k in range(patches - sum(1 for s in later if s.op == "patch"))]
    childless = sorted(set(range(accounts)) - set(parents))
    doomed_accounts = rng.sample(childless, min(len(childless), deletes // 2))
    doomed_contacts = rng.sample(range(contacts), deletes - len(doomed_accounts))
    doomed = [Step("delete", "account", n, {}) for n in doomed_accounts] + \
        [Step("delete", "contact", n, {}) for n in doomed_contacts]
    rng.shuffle(doomed)
    # deletes last: a record patched after its delete would be a 404
    return steps + later + tail + doomed


class Writer:
    """Plays a plan against the sandbox BSS at ``url`` for organization ``org``, spread
    evenly over ``span`` seconds, ``threads`` writes at a time (see the module)."""

    def __init__(self, url: str, token: str, org: str, *, threads: int = 8) -> None:
        self.org = org
        self.http = httpx.Client(base_url=url, timeout=10.0,
                                 headers={"Authorization": f"Bearer {token}"},
                                 limits=httpx.Limits(max_connections=threads * 2))
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="chaos-writer")
        self.retries = 0
        self._lock = threading.Lock()
        self.created: dict[tuple[str, int], Future[Record]] = {}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()

    def play(self, plan: list[Step], span: float, stop: threading.Event) -> None:
        """Submit every step at its time; return when all are done (raises the first
        write that failed for good)."""
        started = time.monotonic()
        pending: list[Future[Any]] = []
        patches: dict[tuple[str, int], list[Future[Any]]] = {}
        for n, step in enumerate(plan):
            delay = started + n * span / len(plan) - time.monotonic()
            if delay > 0 and stop.wait(delay):  # the pace of the workload itself
                break
            key = (step.entity, step.index)
            if step.op == "delete":  # after the record's patches, even ones still retrying
                future = self.pool.submit(self._delete_after, step, patches.pop(key, []))
            else:
                future = self.pool.submit(self._do, step)
            if step.op == "create":
                self.created[key] = future
            elif step.op == "patch":
                patches.setdefault(key, []).append(future)
            pending.append(future)
        for future in pending:
            future.result()

    def _delete_after(self, step: Step, patches: list[Future[Any]]) -> None:
        """``step`` (a delete) once the record's earlier patches are done: a patch held
        up by a fault in one thread must not reach the BSS after the delete in another
        (its 404 would be the workload's race, not a fault's harm). Those patches were
        submitted first, so the pool's queue runs them before this one."""
        for patch in patches:
            patch.result()
        self._do(step)

    def _do(self, step: Step) -> Record | None:
        path = f"/organizations/{self.org}/{step.entity}"
        if step.op == "create":
            body = dict(step.body)
            if step.parent is not None:
                body["accountId"] = self.created[("account", step.parent)].result()["id"]
            return self._call("POST", path, body, key=str(uuid.uuid4())).json()
        record = self.created[(step.entity, step.index)].result()
        if step.op == "patch":
            self._call("PATCH", f"{path}/{record['id']}", step.body)
        else:
            self._call("DELETE", f"{path}/{record['id']}", None)
        return None

    def _call(self, method: str, path: str, body: Record | None, *,
              key: str | None = None) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key else {}
        if method == "PATCH":
            headers["Content-Type"] = "application/merge-patch+json"
        deadline = time.monotonic() + WRITE_DEADLINE
        tried = False
        while True:
            try:
                response = self.http.request(method, path, json=body, headers=headers)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if method == "DELETE" and response.status_code == 404 and tried:
                    return response  # an earlier try deleted it; its answer was lost
                if response.status_code < 400:
                    return response
                problem = f"{response.status_code} {response.text[:300]}"
                if response.status_code < 500:
                    raise AssertionError(f"the BSS refused {method} {path}: {problem}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the BSS did not take {method} {path} within "
                                     f"{WRITE_DEADLINE:g} s; last: {problem}")
            tried = True
            with self._lock:
                self.retries += 1
            time.sleep(0.2)  # the BSS is down (a fault): try again shortly
