"""In-memory adapters for the pusher's ports (``services.pusher.ports``): no I/O at all.

Each fake keeps what the push depends on of the adapter it stands for:

* ``FakeLinkStore`` — ``shared.storage.links.LinkStore``: one row per (instance,
  entity, BSS id), unique external ids (``LinkConflict``), states ``creating`` /
  ``linked`` / ``deleted``, claims held by a message id and taken over once older
  than ``stale_after``, ``forget_claim`` (a row the claim created is removed, an
  older one released) versus ``release_claim`` (the error is remembered; one holding
  a NUL is refused as psycopg refuses it), hashes kept
  when ``None`` is given, cleared on delete, the push mark replaced by a marked write
  and kept by an unmarked one, a pending create (``note_create_sent``, only while the
  message holds the claim; stored as the JSON text the real store writes) cleared by
  linking, deleting or ``clear_create_sent``, a create's steps done (``note_steps_done``:
  linked, the claim kept, only while the message holds it) cleared by a push's linking
  or deleting, and a fresh ``now()`` per statement as
  PostgreSQL gives each transaction (``last_pushed_at`` moves with every push).
* ``FakeBss`` — ``shared.bss.BssClient.get``: records by id, absent → ``None``.
* ``FakeThirdParty`` — ``shared.http.ThirdPartyClient.send``: records every request
  and answers from a script; a status of 400 or more raises what the real client
  raises for it (``shared.http.outcome.status_error``: ``RemoteRejected`` with the
  status, ``RemoteUnavailable``, ``RateLimited``…); a scripted error is raised as is
  (a timeout is ``RemoteUnavailable``).
* ``FakeClock`` — sleeping advances the time at once (and runs a hook), so a test of
  a wait does not wait.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from collections.abc import Awaitable, Callable, Collection, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import psycopg

from shared.audit import AuditRecord, Outcome
from shared.audit.record import FINAL_OUTCOMES
from shared.connector import ConnectorDocument
from shared.connector.payloads import PayloadChecker
from shared.connector.request import RequestPlan
from shared.errors import SyncError, UnsafeRequest
from shared.http import Response
from shared.http.outcome import parse_retry_after, status_error
from shared.runtime.registry import effective_lookups, effective_variables
from shared.storage.instances import Instance
from shared.storage.links import Claim, Link, LinkConflict, PushMark
from shared.transform import LinkLookup, TransformContext

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


class FakeClock:
    """A clock whose ``sleep`` returns at once, having moved the time forward."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        #: awaited after every sleep: lets a test change the world while the push waits
        self.on_sleep: Callable[[], Awaitable[None]] | None = None

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps.append(seconds)
        if self.on_sleep is not None:
            await self.on_sleep()


class FakeLinkStore:
    """``LinkStore`` in a dictionary (see the module docstring for what it keeps)."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.rows: dict[int, Link] = {}
        self._ids = itertools.count(1)
        self._statements = itertools.count(1)

    def now(self) -> datetime:
        """PostgreSQL's ``now()``: every statement a transaction of its own, later than
        the one before (a microsecond per statement on top of the clock)."""
        return EPOCH + timedelta(seconds=self.clock.now,
                                 microseconds=next(self._statements))

    # -- for tests ----------------------------------------------------------------------

    def get(self, instance_id: str, entity: str, bss_id: str) -> Link | None:
        """The row of BSS record ``bss_id``, or ``None``."""
        return self._find(instance_id, entity, "bss_id", bss_id)

    def seed(self, instance_id: str, entity: str, bss_id: str, *, external_id: str | None,
             state: str = "linked", push_hash: str | None = None, claim: str | None = None,
             claimed_at: datetime | None = None) -> Link:
        """Put a row as an earlier push (or another delivery) left it."""
        now = self.now()
        link = Link(id=next(self._ids), instance_id=instance_id, entity=entity, bss_id=bss_id,
                    external_id=external_id, state=state, claim=claim,
                    claimed_at=claimed_at or (now if claim else None), push_hash=push_hash,
                    pull_hash=None, last_pushed_at=now if state != "creating" else None,
                    last_pulled_at=None, last_error=None, created_at=now, updated_at=now)
        self._put(link)
        return link

    async def by_bss_id(self, instance_id: str, entity: str, bss_id: str) -> Link | None:
        """As ``LinkStore.by_bss_id`` (not a port method: for the contract test)."""
        return self.get(instance_id, entity, bss_id)

    async def by_external_id(self, instance_id: str, entity: str,
                             external_id: str) -> Link | None:
        """As ``LinkStore.by_external_id`` (not a port method: for the contract test)."""
        return self._find(instance_id, entity, "external_id", external_id)

    # -- the port ------------------------------------------------------------------------

    async def claim_for_create(self, instance_id: str, entity: str, bss_id: str,
                               message_id: str, stale_after: float | timedelta) -> Claim:
        return self._claim("bss_id", instance_id, entity, bss_id, message_id, stale_after)

    async def claim_external_for_create(self, instance_id: str, entity: str,
                                        external_id: str, message_id: str,
                                        stale_after: float | timedelta) -> Claim:
        """As ``LinkStore.claim_external_for_create`` (the puller's claim)."""
        return self._claim("external_id", instance_id, entity, external_id, message_id,
                           stale_after)

    def _claim(self, key: str, instance_id: str, entity: str, value: str, message_id: str,
               stale_after: float | timedelta) -> Claim:
        stale = (stale_after if isinstance(stale_after, timedelta)
                 else timedelta(seconds=stale_after))
        now = self.now()
        link = self._find(instance_id, entity, key, value)
        if link is None:
            ids = {"bss_id": None, "external_id": None, key: value}
            link = Link(id=next(self._ids), instance_id=instance_id, entity=entity,
                        bss_id=ids["bss_id"], external_id=ids["external_id"],
                        state="creating", claim=message_id,
                        claimed_at=now, push_hash=None, pull_hash=None, last_pushed_at=None,
                        last_pulled_at=None, last_error=None, created_at=now, updated_at=now)
            self._put(link)
            return Claim(owned=True, link=link, new=True)
        free = (link.claim is None or link.claim == message_id
                or (link.claimed_at is not None and link.claimed_at < now - stale))
        if not free:
            return Claim(owned=False, link=link, new=False)
        link = self._put(dataclasses.replace(link, claim=message_id, claimed_at=now,
                                             updated_at=now))
        return Claim(owned=True, link=link, new=False)

    async def pulls_creating(self, instance_id: str, entity: str,
                             stale_after: float | timedelta) -> bool:
        stale = (stale_after if isinstance(stale_after, timedelta)
                 else timedelta(seconds=stale_after))
        return any(link.instance_id == instance_id and link.entity == entity
                   and link.state == "creating" and link.bss_id is None
                   and link.claim is not None and link.claimed_at is not None
                   and link.claimed_at > self.now() - stale for link in self.rows.values())

    async def forget_claim(self, claim: Claim, message_id: str) -> None:
        link = self.rows.get(claim.link.id)
        if link is None or link.claim != message_id:
            return
        if claim.new:
            if link.state == "creating" and (link.external_id is None
                                              or link.bss_id is None):
                del self.rows[link.id]
        else:
            self._put(dataclasses.replace(link, claim=None, claimed_at=None,
                                          updated_at=self.now()))

    async def release_claim(self, instance_id: str, entity: str, message_id: str, *,
                            bss_id: str | None = None, external_id: str | None = None,
                            error: str | None = None) -> bool:
        _text_postgres_accepts(error)
        link = self._find(instance_id, entity, *_key(bss_id, external_id))
        if link is None or link.claim != message_id:
            return False
        self._put(dataclasses.replace(link, claim=None, claimed_at=None, last_error=error,
                                      updated_at=self.now()))
        return True

    async def note_create_sent(self, instance_id: str, entity: str, bss_id: str,
                               message_id: str, sent: dict[str, Any]) -> bool:
        link = self.get(instance_id, entity, bss_id)
        if link is None:
            link = (await self.claim_for_create(instance_id, entity, bss_id, message_id,
                                                0)).link
        if link.claim != message_id:
            return False
        now = self.now()
        self._put(dataclasses.replace(
            link, create_sent_at=now, updated_at=now,
            create_sent=json.dumps(sent, separators=(",", ":"), default=str)))
        return True

    async def note_steps_done(self, instance_id: str, entity: str, bss_id: str,
                              message_id: str, *, external_id: str,
                              done: dict[str, Any]) -> bool:
        link = self.get(instance_id, entity, bss_id)
        if link is None or link.claim != message_id:
            return False
        holder = self._find(instance_id, entity, "external_id", external_id)
        if holder is not None and holder.id != link.id:
            raise LinkConflict(f"cannot link {entity} {bss_id} to external id {external_id} "
                               f"in instance {instance_id}: one of them is already linked to "
                               "another record")
        self._put(dataclasses.replace(
            link, external_id=external_id, state="linked", create_sent_at=None,
            create_sent=None, last_error=None, updated_at=self.now(),
            push_steps=json.dumps(done, separators=(",", ":"), default=str)))
        return True

    async def clear_create_sent(self, instance_id: str, entity: str, bss_id: str,
                                message_id: str) -> bool:
        link = self.get(instance_id, entity, bss_id)
        if link is None or link.claim != message_id:
            return False
        self._put(dataclasses.replace(link, create_sent_at=None, create_sent=None,
                                      updated_at=self.now()))
        return True

    async def mark_linked(self, instance_id: str, entity: str, *, bss_id: str,
                          external_id: str, direction: Literal["push", "pull"],
                          push_hash: str | None = None, pull_hash: str | None = None,
                          pushed: PushMark | None = None) -> Link:
        now = self.now()
        key, other = ("bss_id", "external_id") if direction == "push" else ("external_id",
                                                                            "bss_id")
        values = {"bss_id": bss_id, "external_id": external_id}
        link = self._find(instance_id, entity, key, values[key])
        holder = self._find(instance_id, entity, other, values[other])
        if holder is not None and (link is None or holder.id != link.id):
            raise LinkConflict(f"cannot link {entity} {bss_id} to external id {external_id} "
                               f"in instance {instance_id}: one of them is already linked to "
                               "another record")
        stamp = "last_pushed_at" if direction == "push" else "last_pulled_at"
        if link is None:
            link = Link(id=next(self._ids), instance_id=instance_id, entity=entity,
                        bss_id=bss_id, external_id=external_id, state="linked", claim=None,
                        claimed_at=None, push_hash=push_hash, pull_hash=pull_hash,
                        last_pushed_at=None, last_pulled_at=None, last_error=None,
                        created_at=now, updated_at=now)
            return self._put(dataclasses.replace(link, **{stamp: now}, **_mark(pushed)))
        return self._put(dataclasses.replace(
            link, **{other: values[other], stamp: now}, state="linked", claim=None,
            claimed_at=None, last_error=None, create_sent_at=None, create_sent=None,
            push_steps=None if direction == "push" else link.push_steps,
            push_hash=push_hash if push_hash is not None else link.push_hash,
            pull_hash=pull_hash if pull_hash is not None else link.pull_hash, updated_at=now,
            **_mark(pushed)))

    async def mark_deleted(self, instance_id: str, entity: str, *,
                           direction: Literal["push", "pull"], bss_id: str | None = None,
                           external_id: str | None = None,
                           pushed: PushMark | None = None) -> bool:
        link = self._find(instance_id, entity, *_key(bss_id, external_id))
        if link is None:
            return False
        now = self.now()
        stamp = "last_pushed_at" if direction == "push" else "last_pulled_at"
        self._put(dataclasses.replace(link, state="deleted", claim=None, claimed_at=None,
                                      push_hash=None, pull_hash=None, last_error=None,
                                      create_sent_at=None, create_sent=None,
                                      push_steps=(None if direction == "push"
                                                  else link.push_steps),
                                      updated_at=now, **{stamp: now}, **_mark(pushed)))
        return True

    async def external_ids(self, instance_id: str, entity: str,
                           bss_ids: Iterable[str]) -> dict[str, str]:
        wanted = set(bss_ids)
        return {link.bss_id: link.external_id for link in self.rows.values()
                if (link.instance_id, link.entity) == (instance_id, entity)
                and link.state == "linked" and link.bss_id in wanted
                and link.external_id is not None}

    async def linked(self, instance_id: str, entity: str,
                     bss_ids: Iterable[str]) -> dict[str, Link]:
        wanted = set(bss_ids)
        return {link.bss_id: link for link in self.rows.values()
                if (link.instance_id, link.entity) == (instance_id, entity)
                and link.state == "linked" and link.bss_id in wanted
                and link.bss_id is not None}

    async def bss_ids(self, instance_id: str, entity: str,
                      external_ids: Iterable[str]) -> dict[str, str]:
        wanted = set(external_ids)
        return {link.external_id: link.bss_id for link in self.rows.values()
                if (link.instance_id, link.entity) == (instance_id, entity)
                and link.state == "linked" and link.external_id in wanted
                and link.bss_id is not None}

    # -- rows ----------------------------------------------------------------------------

    def _find(self, instance_id: str, entity: str, key: str, value: str | None) -> Link | None:
        if value is None:
            return None  # NULLs are never equal, in SQL as here
        for link in self.rows.values():
            if ((link.instance_id, link.entity) == (instance_id, entity)
                    and getattr(link, key) == value):
                return link
        return None

    def _put(self, link: Link) -> Link:
        self.rows[link.id] = link
        return link


def _mark(pushed: PushMark | None) -> dict[str, Any]:
    """The columns a write sets for its push mark: none when unmarked (the mark is kept)."""
    if pushed is None:
        return {}
    return {"pushed_by": pushed.message_id, "pushed_attempt": pushed.attempt,
            "pushed_outcome": pushed.outcome}


def _text_postgres_accepts(text: str | None) -> None:
    """Raise what psycopg raises for a text PostgreSQL cannot store."""
    if text is not None and "\x00" in text:
        raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")


def _key(bss_id: str | None, external_id: str | None) -> tuple[str, str | None]:
    if (bss_id is None) == (external_id is None):
        raise ValueError("give exactly one of bss_id and external_id")
    return ("bss_id", bss_id) if bss_id is not None else ("external_id", external_id)


class FakeBss:
    """The BSS's records by (organization, entity, id); a read returns a copy."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.reads: list[tuple[str, str, str]] = []
        self.closed = False

    def put(self, org_id: str, entity: str, record: dict[str, Any]) -> None:
        self.records[(org_id, entity, record["id"])] = copy.deepcopy(record)

    def remove(self, org_id: str, entity: str, record_id: str) -> None:
        del self.records[(org_id, entity, record_id)]

    async def get(self, org_id: str, entity: str, record_id: str) -> dict[str, Any] | None:
        self.reads.append((org_id, entity, record_id))
        record = self.records.get((org_id, entity, record_id))
        return copy.deepcopy(record)

    async def aclose(self) -> None:
        self.closed = True


@dataclasses.dataclass(frozen=True)
class Answer:
    """A scripted answer: a status with a JSON body and headers, or ``error`` (a failure
    without an answer, e.g. ``RemoteUnavailable`` for a timeout)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    error: SyncError | None = None


class FakeThirdParty:
    """Answers requests from a script, operation by operation, in order.

    ``script("createCompany", Answer(201, {...}))`` queues answers for an operation
    (by operationId, or ``"METHOD /path"``); a request nobody scripted an answer for
    fails the test. ``requests`` holds every request sent, in order.
    """

    def __init__(self, base_url: str = "http://acme.test:3000") -> None:
        self._base_url = base_url
        self.requests: list[RequestPlan] = []
        self._script: dict[str, list[Answer]] = {}

    @property
    def base_url(self) -> str:
        return self._base_url

    def script(self, operation: str, *answers: Answer) -> None:
        self._script.setdefault(operation, []).extend(answers)

    @property
    def sent(self) -> list[str]:
        """``"METHOD /path?query"`` of every request, in order."""
        out = []
        for plan in self.requests:
            parts = urlsplit(plan.url)
            out.append(f"{plan.method} {parts.path}" + (f"?{parts.query}" if parts.query else ""))
        return out

    def unanswered(self) -> dict[str, int]:
        """Scripted answers no request consumed, by operation."""
        return {op: len(answers) for op, answers in self._script.items() if answers}

    async def send(self, plan: RequestPlan, *, accept: Collection[int] = ()) -> Response:
        if not plan.url.startswith(self._base_url + "/"):
            raise UnsafeRequest(f"{plan.method} {plan.url} refused: it leaves the instance's "
                                "server")  # as the real client's origin check
        self.requests.append(plan)
        answer = self._next(plan)
        if answer.error is not None:
            raise answer.error
        content = b"" if answer.body is None else json.dumps(answer.body).encode()
        headers = httpx.Headers({"Content-Type": "application/json", **answer.headers})
        request = f"{plan.method} {urlsplit(plan.url).path}"
        if answer.status >= 400 and (answer.status not in accept or answer.body is None):
            retry_after = (parse_retry_after(headers.get("retry-after"))
                           if answer.status in (429, 503) else None)
            raise status_error(request, answer.status, content, retry_after=retry_after)
        return Response(answer.status, headers, answer.body, 0.0, plan.url, content, request)

    def _next(self, plan: RequestPlan) -> Answer:
        for name in (plan.operation.operation_id, plan.operation.key):
            queue = self._script.get(name or "")
            if queue:
                return queue.pop(0)
        raise AssertionError(f"the test scripted no answer for {plan.operation.key} "
                             f"({plan.method} {plan.url})")


@dataclasses.dataclass(frozen=True)
class FakeTarget:
    """An instance as ``InstanceContext`` presents it, with a fake client."""

    instance: Instance
    connector: ConnectorDocument
    client: FakeThirdParty
    checker: PayloadChecker

    def transform_context(self, links: LinkLookup | None) -> TransformContext:
        return TransformContext(lookups=effective_lookups(self.connector,
                                                          self.instance.lookups),
                                links=links,
                                variables=effective_variables(self.connector, self.instance))


class FakeInstances:
    """The registry: instances by id."""

    def __init__(self, *targets: FakeTarget) -> None:
        self.targets = {t.instance.id: t for t in targets}
        self.closed = False

    async def get(self, instance_id: str) -> FakeTarget | None:
        return self.targets.get(instance_id)

    async def aclose(self) -> None:
        self.closed = True


class FakeAudit:
    """Audit rows written, in order."""

    def __init__(self) -> None:
        self.rows: list[AuditRecord] = []

    async def write(self, record: AuditRecord) -> None:
        self.rows.append(record)

    async def final_outcome(self, message_id: str) -> Outcome | None:
        found = [r.outcome for r in self.rows
                 if r.message_id == message_id and r.outcome in FINAL_OUTCOMES]
        return found[-1] if found else None


def instance(instance_id: str = "acme-1", *, org_id: str = "org-1",
             permissions: Iterable[tuple[str, str, str]] = (), active: bool = True) -> Instance:
    """An instance of the Acme connector with ``permissions`` ((entity, direction, action))."""
    return Instance(id=instance_id, org_id=org_id, connector_id="acme-crm", name="Acme",
                    server_url=None, variables={}, credentials={}, settings={}, active=active,
                    created_at=EPOCH, updated_at=EPOCH, deactivated_at=None,
                    connector_sha256="0" * 64, org_active=True,
                    permissions=frozenset(permissions))
