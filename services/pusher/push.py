"""Pushing one BSS record to one instance (docs/architecture.md §5), start to finish.

    read the record from the BSS → read its link → decide (create/update/delete/skip)
    → claim the link → push declared parents first → transform → unchanged? → check the
    body against the request schema → match an existing remote record (create)
    → 'before' request → send → store the link with the payload hash

Every failure is one of ``shared.errors``; the consumer runtime turns it into a
retry or a dead letter and writes the audit row. A claim taken here is released
(with the error remembered on the link, for the nightly run's "failed" pass)
when the push fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from typing import Any, Protocol

import structlog

from services.pusher.decide import CREATE, DELETE, UPDATE, PushDecision, decide
from shared.bss import BssClient
from shared.connector import CallSpec, SyncObject
from shared.connector.preview import idempotency_key
from shared.connector.request import plan_request
from shared.connector.source import resolve_pointer
from shared.errors import (
    AmbiguousMatch,
    DependencyPending,
    RecordBusy,
    RemoteProtocolError,
    RemoteRejected,
    SchemaViolation,
    SyncError,
)
from shared.http import Response
from shared.logging import redact
from shared.references import references
from shared.runtime import InstanceContext
from shared.storage.links import Link, LinkStore
from shared.transform import UNDEFINED, LinksNotLoaded, PreloadedLinks, Transform

log = structlog.get_logger("services.pusher")
CLAIM_STALE_SECONDS = 300.0
MAX_PARENT_DEPTH = 3
MAX_LINK_ROUNDS = 5
#: How long a record waits for a parent another delivery is pushing, before retrying.
PARENT_WAIT_SECONDS = 5.0
PARENT_POLL_SECONDS = 0.1


@dataclasses.dataclass(frozen=True)
class PushOutcome:
    """What happened; ``outcome`` is an audit outcome value."""

    outcome: str  # created | updated | deleted | unchanged | skipped
    external_id: str | None = None
    http_status: int | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


class ParentPusher(Protocol):
    """Pushes a parent record first; the handler implements it (and audits the parent)."""

    async def push_parent(self, ctx: InstanceContext, entity: str, record_id: str,
                          org_id: str, depth: int, *, child_message_id: str) -> PushOutcome:
        ...


def payload_hash(payload: Any) -> str:
    """Content hash of an outbound payload (key order and spacing do not matter)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class RecordPush:
    """One push of one record; build, then ``await run()``."""

    def __init__(self, *, ctx: InstanceContext, obj: SyncObject, org_id: str, record_id: str,
                 message_id: str, links: LinkStore, bss: BssClient, parents: ParentPusher,
                 depth: int = 0) -> None:
        self.ctx = ctx
        self.obj = obj
        self.entity = obj.entity
        self.org_id = org_id
        self.record_id = record_id
        self.message_id = message_id
        self.links = links
        self.bss = bss
        self.parents = parents
        self.depth = depth
        self.instance_id = ctx.instance.id
        self.preloaded = PreloadedLinks()
        self.details: dict[str, Any] = {}

    # -- the pipeline --------------------------------------------------------------------

    async def run(self) -> PushOutcome:
        # The claim is also how the link is read: one statement, not two (the push path
        # is bound by round trips). A claim that leads nowhere is forgotten.
        claim = await self.links.claim_for_create(self.instance_id, self.entity, self.record_id,
                                                  self.message_id, CLAIM_STALE_SECONDS)
        if not claim.owned:
            raise RecordBusy(f"{self.entity} {self.record_id} is being pushed by another "
                             "delivery right now")
        link = claim.link
        try:
            record = await self.bss.get(self.org_id, self.entity, self.record_id)
            decision = self._decide(record, link)
            if decision.skipped:
                await self.links.forget_claim(claim, self.message_id)
                return PushOutcome("skipped", link.external_id,
                                   details={"reason": decision.reason})
            outcome = await self._act(decision.action, record, link)
        except BaseException as exc:
            await self._release(_describe(exc))
            raise
        return outcome

    def _decide(self, record: dict[str, Any] | None, link: Link | None) -> PushDecision:
        return decide(record_exists=record is not None, linked=_is_linked(link),
                      permitted=self.ctx.instance.permitted_actions(self.entity, "push"),
                      supported=[k for k in self.obj.push if k != "match"], entity=self.entity)

    async def _act(self, action: str, record: dict[str, Any] | None, link: Link) -> PushOutcome:
        if action == DELETE:
            return await self._delete(link)
        assert record is not None
        await self._push_parents(record)
        await self._preload_references(record)
        if action == UPDATE:
            return await self._update(record, link)
        return await self._create(record, link)

    # -- actions ---------------------------------------------------------------------------

    async def _create(self, record: dict[str, Any], link: Link) -> PushOutcome:
        call = self.obj.push[CREATE]
        body = await self._body(call, record)
        digest = payload_hash(body)
        matched = await self._match(record)
        if matched is not None:
            self.details["matched"] = matched
            if "update" in self.obj.push and self.ctx.instance.is_permitted(
                    self.entity, "push", "update"):
                linked = await self._store_link(matched, None)
                return await self._update(record, linked, outcome_if_changed="created")
            await self._store_link(matched, digest)
            return PushOutcome("created", matched, details=self.details)
        key = idempotency_key(self.instance_id, self.entity, self.record_id, "create", link.id,
                              link.last_pushed_at)
        response = await self._send(call, record, None, body, idempotency=key)
        external_id = self._created_id(call, response)
        await self._store_link(external_id, digest)
        return PushOutcome("created", external_id, response.status, self.details)

    async def _update(self, record: dict[str, Any], link: Link,
                      outcome_if_changed: str = "updated") -> PushOutcome:
        call = self.obj.push[UPDATE]
        body = await self._body(call, record)
        digest = payload_hash(body)
        if digest == link.push_hash:
            await self._release(None)
            return PushOutcome("unchanged", link.external_id, details=self.details)
        try:
            response = await self._send(call, record, link.external_id, body,
                                        idempotency=self.message_id)
        except RemoteRejected as exc:
            if exc.http_status != 404:
                raise
            return await self._recreate(record, link)
        await self._store_link(link.external_id, digest)
        return PushOutcome(outcome_if_changed, link.external_id, response.status, self.details)

    async def _recreate(self, record: dict[str, Any], link: Link) -> PushOutcome:
        """The remote record is gone (404 on update): create it again if allowed."""
        await self.links.mark_deleted(self.instance_id, self.entity, direction="push",
                                      bss_id=self.record_id)
        self.details["recreated"] = f"the remote record {link.external_id} no longer existed"
        if "create" in self.obj.push and self.ctx.instance.is_permitted(self.entity, "push",
                                                                         "create"):
            claim = await self.links.claim_for_create(self.instance_id, self.entity,
                                                      self.record_id, self.message_id,
                                                      CLAIM_STALE_SECONDS)
            return await self._create(record, claim.link)
        return PushOutcome("skipped", None, details={
            **self.details, "reason": "the remote record was deleted and the instance may "
                                      "not create it again"})

    async def _delete(self, link: Link) -> PushOutcome:
        call = self.obj.push[DELETE]
        status = None
        try:
            response = await self._send(call, None, link.external_id, UNDEFINED,
                                        idempotency=self.message_id)
            status = response.status
        except RemoteRejected as exc:
            if exc.http_status not in (404, 410):
                raise
            status = exc.http_status
            self.details["note"] = "already gone remotely"
        await self.links.mark_deleted(self.instance_id, self.entity, direction="push",
                                      bss_id=self.record_id)
        return PushOutcome("deleted", link.external_id, status, self.details)

    # -- parents and links ------------------------------------------------------------

    async def _push_parents(self, record: dict[str, Any]) -> None:
        """Declared dependencies (``{"contact": ["account"]}``) are pushed first, inline."""
        needed = set(self.ctx.connector.dependencies.get(self.entity, ()))
        if not needed:
            return
        for entity, parent_id in references(self.entity, record):
            if entity not in needed or (entity, parent_id) == (self.entity, self.record_id):
                continue
            linked = await self.links.external_ids(self.instance_id, entity, [parent_id])
            if parent_id in linked:
                self.preloaded.external[(entity, parent_id)] = linked[parent_id]
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
            if outcome.external_id is None:
                raise DependencyPending(
                    f"{entity} {parent_id} could not be pushed first: "
                    f"{outcome.details.get('reason', outcome.outcome)}",
                    entity=entity, record_id=parent_id)
            self.preloaded.external[(entity, parent_id)] = outcome.external_id
            self.details.setdefault("parents", []).append(f"{entity} {parent_id}")

    async def _wait_for_link(self, entity: str, parent_id: str) -> str:
        """The parent's external id once its link appears; ``DependencyPending`` after
        ``PARENT_WAIT_SECONDS``."""
        deadline = time.monotonic() + PARENT_WAIT_SECONDS
        while time.monotonic() < deadline:
            await asyncio.sleep(PARENT_POLL_SECONDS)
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

    async def _with_links(self, build: Any) -> Any:
        """Run a synchronous transform; load the links it asks for and run it again."""
        for _ in range(MAX_LINK_ROUNDS):
            try:
                return build()
            except LinksNotLoaded as missing:
                for kind, entity, ref_id in missing.wanted:
                    await self._load_links(kind, entity, [ref_id])
        return build()

    # -- requests ----------------------------------------------------------------------

    async def _body(self, call: CallSpec, record: dict[str, Any]) -> Any:
        if call.body is None:
            return UNDEFINED
        transform: Transform = call.body
        context = self.ctx.transform_context(self.preloaded)
        return await self._with_links(lambda: transform.apply(record, context))

    async def _send(self, call: CallSpec, record: dict[str, Any] | None, external_id: str | None,
                    body: Any, *, idempotency: str | None = None) -> Response:
        data: dict[str, Any] = {"record": record, "externalId": external_id}
        if call.before is not None:
            data["before"] = await self._before(call.before, data)
        if body is not UNDEFINED:
            self._check(call, body)
        extra = self._idempotency_header(call, idempotency)
        context = self.ctx.transform_context(self.preloaded)
        plan = await self._with_links(lambda: plan_request(
            call, base_url=self.ctx.client.base_url, data=data, context=context, body=body,
            extra_headers=extra))
        started = time.perf_counter()
        response = await self.ctx.client.send(plan)
        self.details["request"] = f"{plan.method} {call.operation.path}"
        self.details["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return response

    def _check(self, call: CallSpec, body: Any) -> None:
        problems = self.ctx.checker.request_errors(call.operation, body)
        if problems:
            raise SchemaViolation(
                f"the {self.entity} would break the request schema of {call.operation.key}: "
                + "; ".join(problems[:5]),
                details={"violations": problems})

    def _idempotency_header(self, call: CallSpec, key: str | None) -> dict[str, str]:
        settings = self.ctx.connector.settings.get("idempotency") or {}
        if not key or not settings.get("header"):
            return {}
        if call.kind not in settings.get("actions", ["create"]):
            return {}
        return {settings["header"]: key}

    async def _before(self, call: CallSpec, data: dict[str, Any]) -> dict[str, Any]:
        context = self.ctx.transform_context(self.preloaded)
        plan = await self._with_links(lambda: plan_request(
            call, base_url=self.ctx.client.base_url, data=data, context=context))
        response = await self.ctx.client.send(plan)
        captured = {}
        for name, source in (call.option("capture") or {}).items():
            kind, _, where = source.partition(":")
            if kind == "header":
                captured[name] = response.headers.get(where)
            else:
                captured[name] = _pointer(response.body, where)
        return captured

    async def _match(self, record: dict[str, Any]) -> str | None:
        call = self.obj.push.get("match")
        if call is None or (call.when is not None and not call.when.evaluate(record)):
            return None
        body = await self._body(call, record)
        response = await self._send(call, record, None, body)
        found = _pointer(response.body, call.option("records", ""))
        if not isinstance(found, list):
            raise RemoteProtocolError(f"the match response of {call.operation.key} has no "
                                      f"array at {call.option('records', '') or '/'}")
        ids = [_pointer(item, call.option("externalId", self.obj.push_external_id))
               for item in found]
        ids = [str(i) for i in ids if i is not None]
        if len(ids) > 1:
            raise AmbiguousMatch(f"{len(ids)} records of {call.operation.key} match this "
                                 f"{self.entity} ({', '.join(ids[:5])}); link it by hand or "
                                 "make the match stricter")
        return ids[0] if ids else None

    def _created_id(self, call: CallSpec, response: Response) -> str:
        pointer = call.option("externalId") or self.obj.push_external_id
        found = _pointer(response.body, pointer)
        if found in (None, ""):
            log.error("push.created_without_id", entity=self.entity, record_id=self.record_id,
                      operation=call.operation.key)
            raise RemoteProtocolError(
                f"{call.operation.key} answered {response.status} without an id at {pointer}: "
                "the record may have been created; check before redelivering")
        return str(found)

    async def _store_link(self, external_id: str, digest: str | None) -> Link:
        return await self.links.mark_linked(self.instance_id, self.entity, bss_id=self.record_id,
                                            external_id=external_id, direction="push",
                                            push_hash=digest)

    async def _release(self, error: str | None) -> None:
        await self.links.release_claim(self.instance_id, self.entity, self.message_id,
                                       bss_id=self.record_id, error=error)


def _is_linked(link: Link | None) -> bool:
    return link is not None and link.state == "linked" and link.external_id is not None


def _pointer(document: Any, pointer: str) -> Any:
    try:
        return resolve_pointer(document, pointer)
    except (KeyError, ValueError):
        return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SyncError):
        return redact(f"{exc.error_class}: {exc}")[:1000]
    return f"{type(exc).__name__}"
