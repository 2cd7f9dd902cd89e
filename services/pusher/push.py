"""Pushing one BSS record to one instance (docs/architecture.md §5), start to finish.

    claim the link (which reads it) → read the record from the BSS → decide
    (create/update/delete/skip) → push declared parents first → load the links the
    transform needs → plan (transform, hash, unchanged?) → match an existing remote
    record (create) → 'before' request → note the create on the link → send → a
    create that found the record already there: compare, update if it differs →
    store the link with the hash of what the third party holds, and the push mark

The choices are made by ``PushPlanner`` (services.pusher.plan, pure); this module
does the I/O around them, through the ports of ``services.pusher.ports``, and
records the outcome on the link. Every failure is one of ``shared.errors``; the
consumer runtime turns it into a retry or a dead letter and writes the audit row.
A claim taken here is released (with the error remembered on the link, for the
nightly run's "failed" pass) when the push fails.

The link write that ends a push carries its mark (message id, attempt, outcome): a
delivery that finds its own mark on the link was redelivered after its process died
between that write and the audit row, and reports what it did instead of pushing
again (docs/architecture.md §5 step 5).

A create notes on its link, durably, what it sends just before sending it. When its
answer is lost (the process dies, the answer is unusable) and the record is then
deleted in the BSS, the delete finds the remote record with that note — the match
with the record the create sent, or the same create replayed with the same
idempotency key — and deletes it; when nothing can find it, ``CreateOutcomeUnknown``
(retried, then dead-lettered), never "never synchronized" (§5 step 4).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog

from services.pusher.conflict import (
    BSS_WINS,
    Verdict,
    bss_modified,
    external_modified,
    modified_since,
    policy_for,
    resolve,
)
from services.pusher.decide import DELETE, UPDATE
from services.pusher.outcome import PushOutcome
from services.pusher.plan import (
    CREATE_ANSWERS,
    MATCH,
    MAX_DIFFERENCES,
    UNCHANGED,
    CallPlan,
    Existing,
    PushPlanner,
    differences,
    is_linked,
    payload_hash,
)
from services.pusher.ports import (
    SYSTEM_CLOCK,
    BssRecords,
    Clock,
    Links,
    ParentPusher,
    PushTarget,
    ThirdParty,
)
from services.pusher.steps import ActionSteps, gone
from shared.audit.normalise import fit_text
from shared.connector import CallSpec, SyncObject
from shared.connector.request import RequestPlan, plan_request
from shared.errors import (
    AuthenticationFailed,
    CreateOutcomeUnknown,
    DependencyPending,
    RecordBusy,
    RemoteProtocolError,
    RemoteRejected,
    SyncError,
)
from shared.http import Response
from shared.logging import redact
from shared.references import references
from shared.storage.links import Link, PushMark
from shared.transform import LinksNotLoaded, PreloadedLinks

log = structlog.get_logger("services.pusher")
CLAIM_STALE_SECONDS = 300.0
MAX_PARENT_DEPTH = 3
MAX_LINK_ROUNDS = 5
#: How long a record waits for a parent another delivery is pushing, before retrying.
PARENT_WAIT_SECONDS = 5.0
PARENT_POLL_SECONDS = 0.1
PARENT_NAMESPACE = uuid.UUID("8a4f3c1e-2b7d-4e59-9c1a-5d6e7f8a9b0c")
#: Statuses a ``pull.read`` may answer that are not errors: the record is gone.
READ_GONE = frozenset({404, 410})
RECOVERED = ("this delivery pushed the record before, and its process ended before the "
             "audit row was written")
T = TypeVar("T")


def parent_message_id(instance_id: str, entity: str, record_id: str, child_message_id: str,
                      depth: int) -> str:
    """The message id of a parent pushed first on a child's behalf: the same for every
    delivery of the child message, so its own redelivery recognises the parent's mark."""
    return str(uuid.uuid5(PARENT_NAMESPACE,
                          f"{instance_id}:{entity}:{record_id}:{child_message_id}:{depth}"))


class RecordPush:
    """One push of one record; build, then ``await run()``."""

    def __init__(self, *, ctx: PushTarget, obj: SyncObject, org_id: str, record_id: str,
                 message_id: str, links: Links, bss: BssRecords, parents: ParentPusher,
                 depth: int = 0, clock: Clock = SYSTEM_CLOCK, attempt: int = 0,
                 action: str = "upsert") -> None:
        self.ctx = ctx
        self.action = action  # what the BSS event said happened (create, update…)
        self.obj = obj
        self.entity = obj.entity
        self.org_id = org_id
        self.record_id = record_id
        self.message_id = message_id
        self.attempt = attempt
        self.links = links
        self.bss = bss
        self.parents = parents
        self.depth = depth
        self.clock = clock
        self.instance_id = ctx.instance.id
        self.preloaded = PreloadedLinks()
        self.context = ctx.transform_context(self.preloaded)
        self.planner = PushPlanner(obj=obj, instance=ctx.instance, connector=ctx.connector,
                                   checker=ctx.checker, base_url=ctx.client.base_url,
                                   record_id=record_id, message_id=message_id)
        self.details: dict[str, Any] = {}
        self.steps = ActionSteps(self)

    # -- the pipeline --------------------------------------------------------------------

    async def run(self) -> PushOutcome:
        """Push the record; raises one of ``shared.errors`` (``RecordBusy`` when another
        delivery holds its claim)."""
        if await self._pull_creating():
            raise RecordBusy(
                f"{self.entity} {self.record_id} may be a record a pull is creating in the "
                "BSS right now (its event came before its link): waiting for that link")
        # The claim is also how the link is read: one statement, not two (the push path
        # is bound by round trips). A claim that leads nowhere is forgotten.
        claim = await self.links.claim_for_create(self.instance_id, self.entity, self.record_id,
                                                  self.message_id, CLAIM_STALE_SECONDS)
        if not claim.owned:
            raise RecordBusy(f"{self.entity} {self.record_id} is being pushed by another "
                             "delivery right now")
        link = claim.link
        try:
            mark = link.push_mark
            if mark is not None and (mark.message_id, mark.attempt) == (self.message_id,
                                                                         self.attempt):
                return await self._recovered(link)
            record = await self.bss.get(self.org_id, self.entity, self.record_id)
            if record is not None and self.planner.unfinished_create(link):
                await self._push_parents(record)
                await self._preload_references(record)
                return await self._finish_create(record, link)
            decision = self.planner.decide(record, link)
            if decision.skipped:
                await self.links.forget_claim(claim, self.message_id)
                return PushOutcome("skipped", link.external_id,
                                   details={"reason": decision.reason})
            if decision.action == DELETE:
                return await self._delete(link)
            assert record is not None
            await self._push_parents(record)
            await self._preload_references(record)
            if decision.action == UPDATE:
                return await self._update(record, link)
            return await self._create(record, link)
        except BaseException as exc:
            await self._release(_describe(exc))
            raise

    async def _pull_creating(self) -> bool:
        """Whether a new BSS record may be the write of a pull in flight: the BSS tells
        us it was created, the instance pulls creates of the entity, and a pull is
        creating one right now. A BSS that does not copy ``X-Sync-Origin`` into its
        events sends the pull's own write here before the puller has linked it; taken
        for a new record, it would be created in the third party a second time. Asked
        before the claim, so no row of ours is in the puller's way when it links; a pull
        claims its record before writing to the BSS, so its claim is seen here."""
        return (self.action == "create" and self.depth == 0
                and self.ctx.instance.is_permitted(self.entity, "pull", "create")
                and await self.links.pulls_creating(self.instance_id, self.entity,
                                                    CLAIM_STALE_SECONDS))

    # -- actions ---------------------------------------------------------------------------

    async def _recovered(self, link: Link) -> PushOutcome:
        """This very delivery (message id and attempt) pushed the record already, and
        its process died before the audit row: report that push, do not push again."""
        await self._release(None)
        log.info("push.recovered", entity=self.entity, record_id=self.record_id,
                 outcome=link.pushed_outcome)
        assert link.pushed_outcome is not None
        return PushOutcome(link.pushed_outcome, link.external_id,
                           details={"recovered": RECOVERED})

    async def _create(self, record: dict[str, Any], link: Link) -> PushOutcome:
        plan = await self._with_links(lambda: self.planner.create(record, link, self.context))
        if plan.match is not None:
            matched = await self._match(plan.match, record)
            if matched is not None:
                self.details["matched"] = matched.external_id
                return await self._adopt(record, plan, matched, None)
        if plan.call.steps:
            return await self.steps.create(plan, record, link)
        response = await self._send_create(plan, record)
        try:
            existing = self.planner.existing(plan, response)
            if existing is not None:
                return await self._adopt(record, plan, existing, response.status)
            external_id = self.planner.created_id(plan.call, response)
        except RemoteProtocolError:
            log.error("push.created_without_id", entity=self.entity, record_id=self.record_id,
                      operation=plan.call.operation.key)
            raise
        await self._store_link(external_id, plan.digest, "created",
                               pull_hash=await self._pull_hash(external_id, plan.body,
                                                               response.body))
        return PushOutcome("created", external_id, response.status, self.details)

    async def _finish_create(self, record: dict[str, Any], link: Link) -> PushOutcome:
        """A create made of steps stopped after its id step (the record is linked, its
        link holds the steps done): send the steps after them, nothing twice."""
        plan = await self._with_links(lambda: self.planner.create(record, link, self.context))
        return await self.steps.create(plan, record, link, done=link.steps_done)

    async def _adopt(self, record: dict[str, Any], plan: CallPlan, existing: Existing,
                     status: int | None) -> PushOutcome:
        """The create found the record already there (a match, a replayed idempotency
        key, a 409): link it, and make it hold what this push meant to send — unchanged
        when it does (``created``, replayed), an update when it may differ (``updated``).
        The hash stored is that of what the third party is known to hold."""
        self.details["replayed"] = existing.how
        differing = differences(plan.body, existing.held)
        if differing == []:
            await self._store_link(existing.external_id, plan.digest, "created",
                                   pull_hash=await self._pull_hash(
                                       existing.external_id, plan.body, existing.held))
            return PushOutcome("created", existing.external_id, status, self.details)
        self.details["differed"] = (differing[:MAX_DIFFERENCES] if differing is not None
                                    else "unknown: the answer shows none of the values sent")
        if not self.planner.may(UPDATE):
            self.details["notUpdated"] = ("the instance may not update: the third party "
                                          "keeps the values it had")
            await self._store_link(existing.external_id, None, "created")
            return PushOutcome("created", existing.external_id, status, self.details)
        linked = await self._store_link(existing.external_id, None)
        return await self._update(record, linked, force=True)

    async def _update(self, record: dict[str, Any], link: Link, *,
                      force: bool = False) -> PushOutcome:
        plan = await self._with_links(
            lambda: self.planner.update(record, link, self.context, force=force))
        if plan.action == UNCHANGED:
            await self._release(None)
            return PushOutcome("unchanged", link.external_id, details=self.details)
        verdict = None if force else await self._conflict(record, link)
        if verdict is not None:
            self.details["conflict"] = verdict.details()
            if verdict.external_wins:
                await self._release(None)
                return PushOutcome("skipped", link.external_id, details={
                    **self.details, "reason": f"changed on both sides since the last sync; "
                                              f"{verdict.why}: the third party's version "
                                              "is pulled next"})
        try:
            response = await self._send(plan, record)
        except RemoteRejected as exc:
            if not gone(exc, plan.call):
                raise
            return await self._recreate(record, link)
        assert plan.external_id is not None
        await self._store_link(plan.external_id, plan.digest, "updated",
                               pull_hash=await self._pull_hash(
                                   plan.external_id, plan.body,
                                   response.body if response is not None else None))
        return PushOutcome("updated", plan.external_id,
                           response.status if response is not None else None, self.details)

    async def _conflict(self, record: dict[str, Any], link: Link) -> Verdict | None:
        """When the third party changed the record too since the last sync, who wins
        (``None``: it did not, or it cannot win). Looked at only when it could win — the
        policy is not bss-wins, the instance may pull updates, the connector reads
        (``pull.read``) and pulls (``pull.body``) the record, the link knows what was
        last synced in pull terms — at the cost of one read of the remote record."""
        policy = policy_for(self.obj, self.ctx.instance.conflict_override(self.entity))
        if (policy == BSS_WINS or link.pull_hash is None or link.external_id is None
                or self.obj.pull_read is None or self.obj.pull_body is None
                or not self.ctx.instance.is_permitted(self.entity, "pull", "update")):
            return None
        held = await self._read_remote(self.obj.pull_read, link.external_id)
        if held is None:  # gone: the update finds out (404) and creates it again
            return None
        if await self._canonical_hash(held) in (None, link.pull_hash):
            return None
        if not modified_since(external_modified(self.obj, held, precise=True),
                              (link.last_pulled_at, link.last_pushed_at)):
            return None  # shown otherwise than when listed, but not modified since
        return resolve(policy, bss_modified=bss_modified(record),
                       external_modified=external_modified(self.obj, held))

    async def _read_remote(self, call: CallSpec, external_id: str) -> dict[str, Any] | None:
        """The remote record as ``call`` (``pull.read``) answers it; ``None`` when gone."""
        data = {"externalId": external_id}
        request = await self._with_links(lambda: plan_request(
            call, base_url=self.ctx.client.base_url, data=data, context=self.context))
        return await read_remote(self.ctx.client, request, f"{self.entity} {external_id}")

    async def _pull_hash(self, external_id: str, sent: Any, answer: Any) -> str | None:
        """The link's ``pull_hash`` after this push: the hash of the canonical entity the
        object's ``pull.body`` makes of what the third party holds now — its answer when
        that is the record (its id at ``pull.externalId``; what was sent fills in the
        members it does not show), else what was sent. The listing that shows the record
        next then finds it ``unchanged`` (the loop guard, pull side). ``None`` (the
        stored hash kept) when the object does not pull, the instance may not pull the
        entity (a transform per push saved), or the transform fails: the push is done,
        that must not fail it."""
        if not self.ctx.instance.permitted_actions(self.entity, "pull"):
            return None
        held = sent
        if self.planner.is_remote_record(answer, external_id):
            held = {**sent, **answer} if isinstance(sent, dict) else answer
        return await self._canonical_hash(held)

    async def _canonical_hash(self, held: Any) -> str | None:
        """The hash of the canonical entity ``pull.body`` makes of a remote record (as the
        puller hashes it); ``None`` when there is none or the transform fails."""
        body = self.obj.pull_body
        if body is None or not isinstance(held, dict):
            return None
        try:
            entity = await self._with_links(lambda: body.apply(held, self.context))
        except SyncError as exc:
            self.details["pullHash"] = f"not computed: {exc.error_class}: {redact(str(exc))}"
            return None
        return payload_hash(entity)

    async def _recreate(self, record: dict[str, Any], link: Link) -> PushOutcome:
        """The remote record is gone (404 on update): create it again if allowed."""
        await self.links.mark_deleted(self.instance_id, self.entity, direction="push",
                                      bss_id=self.record_id)
        self.details["recreated"] = f"the remote record {link.external_id} no longer existed"
        if self.planner.may("create"):
            claim = await self.links.claim_for_create(self.instance_id, self.entity,
                                                      self.record_id, self.message_id,
                                                      CLAIM_STALE_SECONDS)
            if not claim.owned:  # another delivery claimed it since: it creates the record
                raise RecordBusy(f"{self.entity} {self.record_id} is being pushed by another "
                                 "delivery right now")
            return await self._create(record, claim.link)
        return PushOutcome("skipped", None, details={
            **self.details, "reason": "the remote record was deleted and the instance may "
                                      "not create it again"})

    async def _send_create(self, plan: CallPlan, record: dict[str, Any],
                           data: dict[str, Any] | None = None) -> Response:
        """Send a create (or a create's id step, its templates seeing ``data``), having
        noted on the link (durably) that it goes out and what it sends: if its answer is
        lost, a later delete can still find what it made. A create the third party
        refuses made nothing: the note goes."""
        request = await self._prepare(plan, record, data)
        sent = self.planner.create_sent(plan, record)
        if not await self.links.note_create_sent(self.instance_id, self.entity,
                                                 self.record_id, self.message_id, sent):
            raise RecordBusy(f"{self.entity} {self.record_id} was taken over by another "
                             "delivery before its create went out")
        try:
            return await self._transmit(request, accept=CREATE_ANSWERS)
        except (RemoteRejected, AuthenticationFailed):
            await self.links.clear_create_sent(self.instance_id, self.entity, self.record_id,
                                               self.message_id)
            raise

    async def _delete(self, link: Link) -> PushOutcome:
        if not is_linked(link):
            return await self._delete_lost_create(link)
        plan = self.planner.delete(link)
        status = None
        try:
            response = await self._send(plan, None)
            status = response.status if response is not None else None
        except RemoteRejected as exc:
            if exc.http_status not in (404, 410):
                raise
            status = exc.http_status
            self.details["note"] = "already gone remotely"
        await self.links.mark_deleted(self.instance_id, self.entity, direction="push",
                                      bss_id=self.record_id, pushed=self._mark("deleted"))
        return PushOutcome("deleted", link.external_id, status, self.details)

    async def _delete_lost_create(self, link: Link) -> PushOutcome:
        """The record is gone from the BSS, unlinked, and a create of it was sent whose
        answer never came back: find what it made, link it and delete it; nothing found
        means it made nothing (skipped). Raises ``CreateOutcomeUnknown`` when nothing
        can look (no match, no idempotency key) — retried, then dead-lettered."""
        sent = link.create_trace or {}
        record = sent.get("record")
        lookup = await self._with_links(
            lambda: self.planner.find_lost_create(sent, self.context))
        if lookup is None:
            raise CreateOutcomeUnknown(
                f"a create of this {self.entity} may have reached the third party (sent "
                f"{_when(link)}; its answer never came back) and its id is unknown: the "
                "connector declares no match and no idempotency key to find it. The record "
                "is gone from the BSS; find it in the third party and delete it by hand")
        found = await self._find_lost(lookup, record if isinstance(record, dict) else {})
        if found is None:
            await self.links.clear_create_sent(self.instance_id, self.entity, self.record_id,
                                               self.message_id)
            await self._release(None)
            return PushOutcome("skipped", None, details={**self.details, "reason": (
                f"the {self.entity} is gone from the BSS; the create sent {_when(link)} made "
                "no record in the third party (its match finds none)")})
        self.details["resolved"] = (f"a create sent {_when(link)} lost its answer: "
                                    f"{found.how}")
        linked = await self._store_link(found.external_id, None)
        return await self._delete(linked)

    async def _find_lost(self, lookup: CallPlan, record: dict[str, Any]) -> Existing | None:
        """The remote record ``lookup`` (a match, or the create replayed) finds."""
        if lookup.action == MATCH:
            return await self._match(lookup, record)
        response = await self._send_one(lookup, record, accept=CREATE_ANSWERS)
        existing = self.planner.existing(lookup, response)
        if existing is not None:
            return existing
        external_id = self.planner.created_id(lookup.call, response)
        return Existing(external_id, response.body,
                        f"{response.request or 'the create'} made {external_id} now (the "
                        "first had not reached the third party)")

    # -- parents and links ------------------------------------------------------------

    async def _push_parents(self, record: dict[str, Any]) -> None:
        """Declared dependencies (``{"contact": ["account"]}``) are pushed first, inline."""
        needed = set(self.ctx.connector.dependencies.get(self.entity, ()))
        if not needed:
            return
        for entity, parent_id in references(self.entity, record):
            if entity not in needed or (entity, parent_id) == (self.entity, self.record_id):
                continue
            linked = await self._linked_parent(entity, parent_id)
            if linked is not None:
                self.preloaded.external[(entity, parent_id)] = linked
                continue
            if self.depth >= MAX_PARENT_DEPTH:
                raise DependencyPending(f"{entity} {parent_id} is not linked yet (parents "
                                        "nested too deep to push inline)", entity=entity,
                                        record_id=parent_id)
            try:
                outcome = await self.parents.push_parent(self.ctx, entity, parent_id,
                                                         self.org_id, self.depth + 1,
                                                         child_message_id=self.message_id)
            except RecordBusy:
                # Another delivery is pushing that parent right now (typically the
                # parent's own event): wait a little for its link rather than a rung.
                external_id = await self._wait_for_link(entity, parent_id)
                self.preloaded.external[(entity, parent_id)] = external_id
                continue
            if outcome.external_id is None or outcome.outcome == "deleted":
                raise DependencyPending(
                    f"{entity} {parent_id} could not be pushed first: "
                    f"{outcome.details.get('reason', outcome.outcome)}",
                    entity=entity, record_id=parent_id)
            self.preloaded.external[(entity, parent_id)] = outcome.external_id
            self.details.setdefault("parents", []).append(f"{entity} {parent_id}")

    async def _linked_parent(self, entity: str, parent_id: str) -> str | None:
        """The parent's external id when it is linked — unless this message pushed it
        (an earlier delivery or attempt): then it is pushed again, which finds its own
        mark and makes sure the parent's audit row exists (§5 step 5)."""
        link = (await self.links.linked(self.instance_id, entity, [parent_id])).get(parent_id)
        if link is None or link.external_id is None:
            return None
        ours = parent_message_id(self.instance_id, entity, parent_id, self.message_id,
                                 self.depth + 1)
        return None if link.pushed_by == ours else link.external_id

    async def _wait_for_link(self, entity: str, parent_id: str) -> str:
        """The parent's external id once its link appears; ``DependencyPending`` after
        ``PARENT_WAIT_SECONDS``."""
        deadline = self.clock.monotonic() + PARENT_WAIT_SECONDS
        while self.clock.monotonic() < deadline:
            await self.clock.sleep(PARENT_POLL_SECONDS)
            linked = await self.links.external_ids(self.instance_id, entity, [parent_id])
            if parent_id in linked:
                return linked[parent_id]
        raise DependencyPending(f"{entity} {parent_id} is being pushed by another delivery "
                                "and is not linked yet", entity=entity, record_id=parent_id)

    async def _preload_references(self, record: dict[str, Any]) -> None:
        by_entity: dict[str, list[str]] = {}
        for entity, ref_id in references(self.entity, record):
            if (entity, ref_id) not in self.preloaded.external:
                by_entity.setdefault(entity, []).append(ref_id)
        for entity, ids in by_entity.items():
            await self._load_links("external", entity, ids)

    async def _load_links(self, kind: str, entity: str, ids: list[str]) -> None:
        if kind == "external":
            found = await self.links.external_ids(self.instance_id, entity, ids)
            for ref_id in ids:
                self.preloaded.external[(entity, ref_id)] = found.get(ref_id)
        else:
            found = await self.links.bss_ids(self.instance_id, entity, ids)
            for ref_id in ids:
                self.preloaded.bss[(entity, ref_id)] = found.get(ref_id)

    async def _with_links(self, build: Callable[[], T]) -> T:
        """Run a planning step; load the links it asks for and run it again."""
        for _ in range(MAX_LINK_ROUNDS):
            try:
                return build()
            except LinksNotLoaded as missing:
                for kind, entity, ref_id in missing.wanted:
                    await self._load_links(kind, entity, [ref_id])
        return build()

    # -- requests ----------------------------------------------------------------------

    async def _send(self, plan: CallPlan, record: dict[str, Any] | None
                    ) -> Response | None:
        """Send ``plan``: its request, or its steps (``None`` when their main step was
        skipped)."""
        if plan.call.steps:
            return await self.steps.run(plan, record)
        return await self._send_one(plan, record)

    async def _send_one(self, plan: CallPlan, record: dict[str, Any] | None,
                        accept: frozenset[int] = frozenset()) -> Response:
        """Send ``plan``'s one request."""
        return await self._transmit(await self._prepare(plan, record), accept)

    async def _prepare(self, plan: CallPlan, record: dict[str, Any] | None,
                       data: dict[str, Any] | None = None) -> RequestPlan:
        """The request for ``plan`` (its ``before`` call sent first, when it has one);
        its templates see ``data``, by default the record and the external id."""
        data = data if data is not None else {"record": record,
                                              "externalId": plan.external_id}
        if plan.call.before is not None:
            data["before"] = await self._before(plan.call, data)
        return await self._with_links(lambda: self.planner.request(plan, data, self.context))

    async def _transmit(self, request: RequestPlan,
                        accept: frozenset[int] = frozenset()) -> Response:
        started = self.clock.monotonic()
        response = await self.ctx.client.send(request, accept=accept)
        self.details["request"] = (response.request
                                   or f"{request.method} {urlsplit(request.url).path}")
        self.details["elapsed_ms"] = round((self.clock.monotonic() - started) * 1000, 1)
        return response

    async def _before(self, call: CallSpec, data: dict[str, Any]) -> dict[str, Any]:
        """Send ``call``'s ``before`` call; what it captures (an ETag…)."""
        before = call.before
        assert before is not None
        request = await self._with_links(
            lambda: self.planner.before_request(call, data, self.context))
        response = await self.ctx.client.send(request)
        return self.planner.captured(before, response)

    async def _match(self, match: CallPlan, record: dict[str, Any]) -> Existing | None:
        response = await self._send_one(match, record)
        return self.planner.matched(match.call, response)

    async def _store_link(self, external_id: str, digest: str | None,
                          outcome: str | None = None, *, pull_hash: str | None = None) -> Link:
        """Link the record to ``external_id`` with ``digest`` and ``pull_hash`` (``None``
        keeps the stored hash); a write that ends the push gives its ``outcome`` and is
        marked."""
        return await self.links.mark_linked(self.instance_id, self.entity, bss_id=self.record_id,
                                            external_id=external_id, direction="push",
                                            push_hash=digest, pull_hash=pull_hash,
                                            pushed=self._mark(outcome) if outcome else None)

    def _mark(self, outcome: str) -> PushMark:
        return PushMark(self.message_id, self.attempt, outcome)

    async def _release(self, error: str | None) -> None:
        await self.links.release_claim(self.instance_id, self.entity, self.message_id,
                                       bss_id=self.record_id, error=error)


def _when(link: Link) -> str:
    """When the link's pending create was sent, for a person to read."""
    at = link.create_sent_at
    return f"at {at.isoformat(timespec='seconds')}" if at is not None else "earlier"


def _describe(exc: BaseException) -> str:
    """The error the link remembers: redacted, 1,000 characters at most, and text
    PostgreSQL accepts (an unusable answer quoted in it may hold a NUL, which would
    make releasing the claim fail and leave the record claimed)."""
    if isinstance(exc, SyncError):
        return fit_text(redact(f"{exc.error_class}: {exc}"), 1000)
    return f"{type(exc).__name__}"


async def read_remote(client: ThirdParty, request: RequestPlan,
                      what: str) -> dict[str, Any] | None:
    """The remote record a ``pull.read`` request answers; ``None`` when the third party
    says it is gone (404, 410). Raises ``RemoteProtocolError`` when the answer is not a
    JSON object (``what`` names the record), and what ``client.send`` raises."""
    try:
        response = await client.send(request, accept=READ_GONE)
    except RemoteRejected as exc:
        if exc.http_status in READ_GONE:
            return None
        raise
    if response.status in READ_GONE:
        return None
    if not isinstance(response.body, dict):
        raise RemoteProtocolError(f"{response.request} answered something other than a "
                                  f"JSON object for {what}", http_status=response.status)
    return response.body

