"""One pull of one external record into the BSS (docs/architecture.md §5, pull side).

    record     inline in the message, or read with the object's ``pull.read`` when the
               message carries only the external id (a 404/410 there: deleted)
    claim      the link row by external id (``INSERT … ON CONFLICT``): two deliveries
               of one record never both create it; held elsewhere → ``RecordBusy``
    read       the linked BSS record and its ETag
    decide     create / update / delete / skip (``services.puller.decide``)
    transform  ``pull.body`` → the canonical entity; ``$bssId`` parents read from the
               links; a parent not linked yet is pulled first, inline, when its object
               declares ``pull.read`` (read, transformed, written, linked: a pull of its
               own with the same claim and idempotency rules, its own audit row, at
               most ``MAX_PARENT_DEPTH`` deep); otherwise, or when that pull does not
               link it, ``DependencyPending`` (retried)
    validate   ``schemas/entities/<entity>`` (``SchemaViolation``, dead-lettered at once)
    compare    (an update) with the last sync: the canonical hash equals the link's
               ``pull_hash``, or the BSS record holds the entity already (a record we
               pushed, listed again: the link's pull hash is brought up to date) →
               ``unchanged``, nothing written; the BSS changed too since the last sync
               (its push payload hashes otherwise than ``push_hash``) → a conflict, for
               the object's policy (``services.pusher.conflict``): the BSS wins →
               ``skipped`` (its push follows), the third party wins → the update; unless
               the record's modification time says it was not modified since that sync
               (shown in another shape): ``unchanged``, the BSS's push follows
    write      create with ``Idempotency-Key`` / merge-patch or delete with ``If-Match``,
               always with ``X-Sync-Origin: <instance id>``
    link       ``mark_linked`` (direction pull, the hash) or ``mark_deleted``

Whatever fails releases the claim with the error remembered on the link, and
raises: the runtime retries or dead-letters by the error's class. The outcome is
returned for the audit row the runtime writes before it acks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from services.puller.decide import (
    BSS_ONLY,
    BSS_ONLY_REASON,
    CONFLICT,
    CREATE,
    DELETE,
    IN_STEP,
    IN_STEP_REASON,
    compare,
)
from services.puller.outcome import PullOutcome
from services.puller.plan import PullPlanner, canonical_hash, holds, idempotency_key
from services.puller.ports import BssWrites, Links, ParentPuller, PullSource
from services.pusher.conflict import (
    bss_modified,
    external_modified,
    modified_since,
    policy_for,
    resolve,
)
from services.pusher.push import (
    CLAIM_STALE_SECONDS,
    MAX_LINK_ROUNDS,
    parent_message_id,
    read_remote,
)
from shared.audit.normalise import fit_text
from shared.bss.client import Versioned
from shared.connector import SyncObject
from shared.connector.request import plan_request
from shared.errors import (
    BssConflict,
    BssUnavailable,
    InfrastructureError,
    InvalidMessage,
    RecordBusy,
    SyncError,
)
from shared.logging import redact
from shared.storage.links import Claim, Link
from shared.transform import LinksNotLoaded, PreloadedLinks

T = TypeVar("T")
log = structlog.get_logger(__name__)

#: How deep parents are pulled first (a parent's parent…); deeper: ``DependencyPending``.
MAX_PARENT_DEPTH = 3
#: Outcomes of a parent's pull that leave it linked.
LINKED_OUTCOMES = frozenset({"created", "updated", "unchanged"})


class RecordPull:
    """One pull of one external record; build, then ``await run()``."""

    def __init__(self, *, ctx: PullSource, obj: SyncObject, org_id: str, message_id: str,
                 action: str, links: Links, bss: BssWrites, record: dict[str, Any] | None,
                 external_id: str | None, parents: ParentPuller | None = None,
                 depth: int = 0) -> None:
        self.ctx = ctx
        self.obj = obj
        self.entity = obj.entity
        self.org_id = org_id
        self.message_id = message_id
        self.action = action
        self.links = links
        self.bss = bss
        self.record = record
        self.external_id = external_id
        self.parents = parents
        self.depth = depth
        self.instance_id = ctx.instance.id
        self.planner = PullPlanner(obj)
        self.preloaded = PreloadedLinks()
        self.context = ctx.transform_context(self.preloaded)
        self.details: dict[str, Any] = {}

    async def run(self) -> PullOutcome:
        """Pull the record; raises one of ``shared.errors``."""
        record = self.record
        external_id = self.external_id
        if record is None and self.action != "delete":
            record = await self._read_external()
        if external_id is None:
            if record is None:
                raise InvalidMessage("a pull message needs the external record or its id")
            external_id = self.planner.external_id(record)
        self.external_id = external_id
        claim = await self.links.claim_external_for_create(
            self.instance_id, self.entity, external_id, self.message_id, CLAIM_STALE_SECONDS)
        if not claim.owned:
            raise RecordBusy(f"external {self.entity} {external_id} is being pulled by another "
                             "delivery right now")
        link = claim.link
        try:
            deleted = record is None or self.planner.deleted(record, self.action)
            current = await self._current(link)
            decision = self.planner.decide(
                deleted=deleted, link=link, bss_exists=current is not None,
                permitted=self.ctx.instance.permitted_actions(self.entity, "pull"))
            if decision.skipped:
                await self.links.forget_claim(claim, self.message_id)
                return PullOutcome("skipped", link.bss_id, external_id,
                                   details={"reason": decision.reason})
            if decision.action == DELETE:
                assert current is not None and link.bss_id is not None
                return await self._delete(link.bss_id, current)
            assert record is not None
            entity = await self._with_links(lambda: self.planner.canonical(record,
                                                                           self.context))
            digest = canonical_hash(entity)
            if decision.action == CREATE:
                return await self._create(entity, digest, link)
            assert current is not None and link.bss_id is not None
            if digest == link.pull_hash:
                await self.links.forget_claim(claim, self.message_id)
                return PullOutcome("unchanged", link.bss_id, external_id)
            return await self._reconcile(claim, link, record, entity, digest, current)
        except BaseException as exc:
            await self.links.release_claim(self.instance_id, self.entity, self.message_id,
                                           external_id=external_id, error=_describe(exc))
            raise

    # -- actions ---------------------------------------------------------------------------

    async def _reconcile(self, claim: Claim, link: Link, record: dict[str, Any],
                         entity: dict[str, Any], digest: str,
                         current: Versioned) -> PullOutcome:
        """The third party shows another record than the link's last sync: write it,
        or not (the BSS holds it already; a conflict the BSS wins)."""
        assert link.bss_id is not None and self.external_id is not None
        bss_holds = holds(current.record, entity)
        state = compare(external_changed=True, bss_holds=bss_holds,
                        bss_changed=not bss_holds and await self._bss_changed(current, link),
                        modified_since=modified_since(
                            external_modified(self.obj, record, precise=True),
                            (link.last_pulled_at, link.last_pushed_at)))
        if state == BSS_ONLY:
            await self.links.forget_claim(claim, self.message_id)
            return PullOutcome("unchanged", link.bss_id, self.external_id,
                               details={"reason": BSS_ONLY_REASON, **self.details})
        if state == IN_STEP:
            await self.links.mark_linked(self.instance_id, self.entity, bss_id=link.bss_id,
                                         external_id=self.external_id, direction="pull",
                                         pull_hash=digest)
            return PullOutcome("unchanged", link.bss_id, self.external_id,
                               details={"reason": IN_STEP_REASON, **self.details})
        if state == CONFLICT:
            verdict = resolve(
                policy_for(self.obj, self.ctx.instance.conflict_override(self.entity)),
                bss_modified=bss_modified(current.record),
                external_modified=external_modified(self.obj, record))
            self.details["conflict"] = verdict.details()
            if not verdict.external_wins:
                await self.links.forget_claim(claim, self.message_id)
                return PullOutcome("skipped", link.bss_id, self.external_id, details={
                    "reason": f"changed on both sides since the last sync; {verdict.why}: "
                              "the BSS's version is pushed next", **self.details})
        return await self._update(link.bss_id, entity, digest, current)

    async def _bss_changed(self, current: Versioned, link: Link) -> bool:
        """Whether the BSS record changed since the last sync: its push payload hashes
        otherwise than the link's ``push_hash``. Unknowable (no push hash, no push
        update body, or the instance may not push updates: the BSS's version could not
        win) counts as unchanged."""
        if link.push_hash is None or not self.ctx.instance.is_permitted(self.entity, "push",
                                                                         "update"):
            return False
        held = await self._push_hash(current.record)
        return held is not None and held != link.push_hash

    async def _create(self, entity: dict[str, Any], digest: str, link: Link) -> PullOutcome:
        assert self.external_id is not None
        key = idempotency_key(self.instance_id, self.entity, self.external_id, link)
        created = await self.bss.create(self.org_id, self.entity, entity,
                                        origin=self.instance_id, idempotency_key=key)
        bss_id = created.get("id") if isinstance(created, dict) else None
        if not isinstance(bss_id, str) or not bss_id:
            raise BssUnavailable(f"the BSS answered the create of a {self.entity} without "
                                 "its id")
        await self.links.mark_linked(self.instance_id, self.entity, bss_id=bss_id,
                                     external_id=self.external_id, direction="pull",
                                     pull_hash=digest,
                                     push_hash=await self._written_push_hash(created))
        return PullOutcome("created", bss_id, self.external_id, 201,
                           details={"idempotencyKey": key, **self.details})

    async def _update(self, bss_id: str, entity: dict[str, Any], digest: str,
                      current: Versioned) -> PullOutcome:
        assert self.external_id is not None
        patched = await self.bss.patch(self.org_id, self.entity, bss_id, entity,
                                       origin=self.instance_id, if_match=current.etag)
        if patched is None:
            raise BssConflict(f"the BSS {self.entity} {bss_id} was deleted while it was being "
                              "updated")
        await self.links.mark_linked(self.instance_id, self.entity, bss_id=bss_id,
                                     external_id=self.external_id, direction="pull",
                                     pull_hash=digest,
                                     push_hash=await self._written_push_hash(patched.record))
        return PullOutcome("updated", bss_id, self.external_id, 200, details=self.details)

    async def _delete(self, bss_id: str, current: Versioned) -> PullOutcome:
        assert self.external_id is not None
        await self.bss.delete(self.org_id, self.entity, bss_id, origin=self.instance_id,
                              if_match=current.etag)
        await self.links.mark_deleted(self.instance_id, self.entity, direction="pull",
                                      external_id=self.external_id)
        return PullOutcome("deleted", bss_id, self.external_id, 204)

    async def _written_push_hash(self, written: dict[str, Any]) -> str | None:
        """The push hash to store for the record as written (``_push_hash``); ``None``
        (nothing computed, the stored hash kept) when the instance may not push updates
        of the entity: the pusher never sees the BSS's echo of this write, and a BSS
        version that cannot be pushed never makes a conflict (``_bss_changed``). Saves
        the push transform — ~12 % of a pull-only puller's CPU."""
        if not self.ctx.instance.is_permitted(self.entity, "push", "update"):
            return None
        return await self._push_hash(written)

    async def _push_hash(self, written: dict[str, Any]) -> str | None:
        """The hash the pusher would compute for the BSS record as written (its
        ``push.update`` body, or its steps' bodies): stored as the push hash, the BSS's
        echo of this write is ``unchanged`` for the pusher even when the event lost its
        origin (the loop guard by hash). ``None`` (the stored hash kept) when there is
        no such body or it cannot be computed — the write is done, that must not fail
        the pull."""
        update = self.obj.push.get("update")
        if update is None or (update.body is None and not update.steps):
            return None
        try:
            payload = await self._with_links(
                lambda: update.pushed_payload(written, self.context))
        except SyncError as exc:
            self.details["pushHash"] = f"not computed: {exc.error_class}: {redact(str(exc))}"
            return None
        return canonical_hash(payload)

    # -- reads -----------------------------------------------------------------------------

    async def _current(self, link: Link) -> Versioned | None:
        """The linked BSS record, ``None`` when there is none (not linked, or gone)."""
        if link.state != "linked" or link.bss_id is None:
            return None
        return await self.bss.read(self.org_id, self.entity, link.bss_id)

    async def _read_external(self) -> dict[str, Any] | None:
        """The record read with ``pull.read``; ``None`` when the third party says it is
        gone. Raises ``InvalidMessage`` when the connector cannot read it."""
        call = self.obj.pull_read
        if call is None or self.external_id is None:
            raise InvalidMessage(f"a pull message for {self.entity} without the record needs "
                                 "its external id and a connector declaring pull.read")
        data = {"externalId": self.external_id}
        request = await self._with_links(lambda: plan_request(
            call, base_url=self.ctx.client.base_url, data=data, context=self.context))
        return await read_remote(self.ctx.client, request,
                                 f"external {self.entity} {self.external_id}")

    async def _with_links(self, build: Callable[[], T]) -> T:
        """Run a planning step; load the links it asks for and run it again."""
        for _ in range(MAX_LINK_ROUNDS):
            try:
                return build()
            except LinksNotLoaded as missing:
                for kind, entity, ref_id in missing.wanted:
                    await self._load(kind, entity, ref_id)
        return build()

    async def _load(self, kind: str, entity: str, ref_id: str) -> None:
        if kind == "bss":
            found = await self.links.bss_ids(self.instance_id, entity, [ref_id])
            bss_id = found.get(ref_id)
            if bss_id is None:
                bss_id = await self._pull_parent(entity, ref_id)
            self.preloaded.bss[(entity, ref_id)] = bss_id
        else:
            found = await self.links.external_ids(self.instance_id, entity, [ref_id])
            self.preloaded.external[(entity, ref_id)] = found.get(ref_id)

    # -- parents ---------------------------------------------------------------------------

    async def _pull_parent(self, entity: str, external_id: str) -> str | None:
        """Pull the external ``entity`` ``external_id`` (a ``$bssId`` reference not
        linked yet) first; its BSS id once linked, ``None`` when it cannot be pulled
        here — no parent puller, nesting too deep, a reference to this record itself,
        no object of ``entity`` that reads records (``pull.read``), or its pull did not
        link it (skipped, deleted, failed: its audit row says why). ``None`` makes the
        transform raise ``DependencyPending``: the record is retried along the ladder.
        Raises ``InfrastructureError`` (PostgreSQL, the audit log)."""
        if (self.parents is None or self.depth >= MAX_PARENT_DEPTH
                or (entity, external_id) == (self.entity, self.external_id)):
            return None
        objects = [o for o in self.ctx.connector.objects_for(entity)
                   if o.pull_read is not None and o.pull_body is not None]
        if not objects:
            return None
        try:
            outcome = await self.parents.pull_parent(
                self.ctx, objects[0], external_id, self.org_id, self.depth + 1,
                child_message_id=self.message_id)
        except InfrastructureError:
            raise
        except SyncError as exc:  # audited as the parent's own row by the puller
            log.info("puller.parent_not_pulled", parent_entity=entity,
                     parent_external_id=external_id, error_class=exc.error_class)
            return None
        if outcome.outcome not in LINKED_OUTCOMES or not outcome.record_id:
            return None
        self.details.setdefault("parents", []).append(
            f"{entity} {external_id} {outcome.outcome} {outcome.record_id}")
        return str(outcome.record_id)


def parent_pull_message_id(instance_id: str, entity: str, external_id: str,
                           child_message_id: str, depth: int) -> str:
    """The message id (and link claim) of a parent pulled first on a child's behalf:
    the same for every delivery of the child, so a redelivery after a crash takes its
    own claim back instead of waiting for it to go stale."""
    return parent_message_id(instance_id, f"pull:{entity}", external_id, child_message_id,
                             depth)


def _describe(exc: BaseException) -> str:
    """The error the link remembers: redacted, 1,000 characters at most."""
    if isinstance(exc, SyncError):
        return fit_text(redact(f"{exc.error_class}: {exc}"), 1000)
    return type(exc).__name__
