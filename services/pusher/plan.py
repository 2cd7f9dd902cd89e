"""Planning one push: what to send and how to read the answers (pure, no I/O).

``RecordPush`` (services.pusher.push) does the I/O — claim, read, send, record — in
the order of docs/architecture.md §5; every choice in between is made here, from
values alone:

    decide     record + link + permissions      → create / update / delete / skip
    create     transform → hash → idempotency key → look for a match first?
    update     transform → hash → unchanged (same hash as pushed: send nothing)?
    delete     the linked remote id
    request    a planned call + its inputs       → the ``RequestPlan`` (body checked)
    answers    the matched id(s), the created id, what a ``before`` call captures

Transforms and templates read links from the ``PreloadedLinks`` in the context they
are given: a link not loaded yet raises ``LinksNotLoaded`` and the caller loads it
and plans again (planning twice is harmless: nothing happened). Other errors are
``shared.errors``: ``MappingError``, ``SchemaViolation``, ``AmbiguousMatch``,
``RemoteProtocolError``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from services.pusher.decide import CREATE, DELETE, UPDATE, PushDecision, decide
from services.pusher.ports import InstanceView, RequestChecker
from shared.connector import CallSpec, ConnectorDocument, SyncObject
from shared.connector.idempotency import idempotency_key
from shared.connector.request import RequestPlan, plan_request
from shared.connector.source import resolve_pointer
from shared.errors import AmbiguousMatch, RemoteProtocolError, SchemaViolation
from shared.http import Response
from shared.storage.links import Link
from shared.transform import UNDEFINED, Transform, TransformContext

UNCHANGED, MATCH = "unchanged", "match"


@dataclasses.dataclass(frozen=True, slots=True)
class CallPlan:
    """One remote call of a push, decided but not sent.

    ``action``: create | update | unchanged (an update not worth sending) | delete |
    match. ``body`` is the transformed body (``UNDEFINED``: none), ``digest`` its
    hash (what the link stores once pushed). ``idempotency_key`` goes in the
    connector's idempotency header when it lists the action. ``match``: a create
    looks for an existing remote record with this call first.
    """

    action: str
    call: CallSpec
    body: Any = UNDEFINED
    digest: str | None = None
    external_id: str | None = None
    idempotency_key: str | None = None
    match: CallPlan | None = None


def payload_hash(payload: Any) -> str:
    """Content hash of an outbound payload (key order and spacing do not matter)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class PushPlanner:
    """The choices of one push of one record (``obj``'s calls, ``instance``'s rights)."""

    def __init__(self, *, obj: SyncObject, instance: InstanceView, connector: ConnectorDocument,
                 checker: RequestChecker, base_url: str, record_id: str,
                 message_id: str) -> None:
        self.obj = obj
        self.entity = obj.entity
        self.instance = instance
        self.connector = connector
        self.checker = checker
        self.base_url = base_url
        self.record_id = record_id
        self.message_id = message_id

    # -- what to do ---------------------------------------------------------------------

    def decide(self, record: dict[str, Any] | None, link: Link | None) -> PushDecision:
        """Create, update, delete or skip (with the reason): see ``services.pusher.decide``."""
        return decide(record_exists=record is not None, linked=is_linked(link),
                      permitted=self.instance.permitted_actions(self.entity, "push"),
                      supported=[k for k in self.obj.push if k != MATCH], entity=self.entity)

    def may(self, action: str) -> bool:
        """Whether the connector declares ``action`` and the instance may do it."""
        return action in self.obj.push and self.instance.is_permitted(self.entity, "push",
                                                                       action)

    def create(self, record: dict[str, Any], link: Link,
               context: TransformContext) -> CallPlan:
        """The create of ``record``, whose (claimed) link is ``link``; with the match to
        try first when the connector declares one and its ``when`` holds."""
        call = self.obj.push[CREATE]
        body = self.body(call, record, context)
        key = idempotency_key(self.instance.id, self.entity, self.record_id, CREATE, link.id,
                              link.last_pushed_at)
        return CallPlan(CREATE, call, body, payload_hash(body), idempotency_key=key,
                        match=self._match(record, context))

    def _match(self, record: dict[str, Any], context: TransformContext) -> CallPlan | None:
        call = self.obj.push.get(MATCH)
        if call is None or (call.when is not None and not call.when.evaluate(record)):
            return None
        return CallPlan(MATCH, call, self.body(call, record, context))

    def update(self, record: dict[str, Any], link: Link,
               context: TransformContext) -> CallPlan:
        """The update of the remote record ``link`` points to; ``unchanged`` when the body
        hashes to what was pushed last."""
        call = self.obj.push[UPDATE]
        body = self.body(call, record, context)
        digest = payload_hash(body)
        action = UNCHANGED if digest == link.push_hash else UPDATE
        return CallPlan(action, call, body, digest, link.external_id,
                        idempotency_key=self.message_id)

    def delete(self, link: Link) -> CallPlan:
        """The delete of the remote record ``link`` points to."""
        return CallPlan(DELETE, self.obj.push[DELETE], external_id=link.external_id,
                        idempotency_key=self.message_id)

    def body(self, call: CallSpec, record: dict[str, Any], context: TransformContext) -> Any:
        """``record`` through the call's body transform (``UNDEFINED`` when it has none)."""
        if call.body is None:
            return UNDEFINED
        transform: Transform = call.body
        return transform.apply(record, context)

    # -- requests -------------------------------------------------------------------------

    def request(self, plan: CallPlan, data: dict[str, Any],
                context: TransformContext) -> RequestPlan:
        """The request for ``plan``: templates rendered from ``data`` (``record``,
        ``externalId``, ``before``), the body checked against the request schema
        (``SchemaViolation``), the idempotency header when the connector asks for it."""
        call = plan.call
        if plan.body is not UNDEFINED:
            self._check(call, plan.body)
        return plan_request(call, base_url=self.base_url, data=data, context=context,
                            body=plan.body,
                            extra_headers=self._idempotency_header(call, plan.idempotency_key))

    def before_request(self, call: CallSpec, data: dict[str, Any],
                       context: TransformContext) -> RequestPlan:
        """The ``before`` call of ``call`` (``call.before``), rendered from ``data``."""
        assert call.before is not None
        return plan_request(call.before, base_url=self.base_url, data=data, context=context)

    def _check(self, call: CallSpec, body: Any) -> None:
        problems = self.checker.request_errors(call.operation, body)
        if problems:
            raise SchemaViolation(
                f"the {self.entity} would break the request schema of {call.operation.key}: "
                + "; ".join(problems[:5]),
                details={"violations": problems})

    def _idempotency_header(self, call: CallSpec, key: str | None) -> dict[str, str]:
        settings = self.connector.settings.get("idempotency") or {}
        if not key or not settings.get("header"):
            return {}
        if call.kind not in settings.get("actions", ["create"]):
            return {}
        return {settings["header"]: key}

    # -- answers --------------------------------------------------------------------------

    def captured(self, before: CallSpec, response: Response) -> dict[str, Any]:
        """What a ``before`` call's ``capture`` option takes from its answer
        (``header:ETag``, or a JSON pointer into the body); ``None`` where absent."""
        captured = {}
        for name, source in (before.option("capture") or {}).items():
            kind, _, where = source.partition(":")
            if kind == "header":
                captured[name] = response.headers.get(where)
            else:
                captured[name] = pointer(response.body, where)
        return captured

    def matched_id(self, match: CallSpec, response: Response) -> str | None:
        """The remote record a match answer names, ``None`` for none; raises
        ``AmbiguousMatch`` for several, ``RemoteProtocolError`` when the answer holds
        no array where the connector says."""
        found = pointer(response.body, match.option("records", ""))
        if not isinstance(found, list):
            raise RemoteProtocolError(f"the match response of {match.operation.key} has no "
                                      f"array at {match.option('records', '') or '/'}")
        ids = [pointer(item, match.option("externalId", self.obj.push_external_id))
               for item in found]
        ids = [str(i) for i in ids if i is not None]
        if len(ids) > 1:
            raise AmbiguousMatch(f"{len(ids)} records of {match.operation.key} match this "
                                 f"{self.entity} ({', '.join(ids[:5])}); link it by hand or "
                                 "make the match stricter")
        return ids[0] if ids else None

    def created_id(self, create: CallSpec, response: Response) -> str:
        """The id of the record a create answer describes; raises ``RemoteProtocolError``
        when the answer has none (the record may exist remotely all the same)."""
        where = create.option("externalId") or self.obj.push_external_id
        found = pointer(response.body, where)
        if found in (None, ""):
            raise RemoteProtocolError(
                f"{create.operation.key} answered {response.status} without an id at {where}: "
                "the record may have been created; check before redelivering")
        return str(found)


def is_linked(link: Link | None) -> bool:
    """Whether ``link`` pairs the record with a live remote record."""
    return link is not None and link.state == "linked" and link.external_id is not None


def pointer(document: Any, where: str) -> Any:
    """The value at JSON pointer ``where``, ``None`` when there is none."""
    try:
        return resolve_pointer(document, where)
    except (KeyError, ValueError):
        return None
