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
    existing   a create that found the record already there (a match, a replayed
               idempotency key, a 409 naming it) → what it holds that differs from
               what was meant (docs/architecture.md §5 step 4)
    lost       what a create about to go out leaves on its link (key, record, body),
               and how a delete finds what such a create made when its answer was
               lost: the match with the record it sent, else the same create
               replayed with the same idempotency key (docs/architecture.md §5 step 4)

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
from collections.abc import Mapping
from typing import Any

from services.pusher.decide import CREATE, DELETE, UPDATE, PushDecision, decide
from services.pusher.ports import InstanceView, RequestChecker
from shared.connector import CallSpec, ConnectorDocument, SyncObject
from shared.connector.idempotency import idempotency_key
from shared.connector.request import RequestPlan, plan_request
from shared.connector.source import resolve_pointer
from shared.errors import AmbiguousMatch, RemoteProtocolError, SchemaViolation
from shared.http import Response
from shared.http.outcome import status_error
from shared.storage.links import Link
from shared.transform import UNDEFINED, Transform, TransformContext

UNCHANGED, MATCH = "unchanged", "match"
#: The replay header when the connector names none (Stripe's, and the Acme stand-in's).
REPLAYED_HEADER = "Idempotent-Replayed"
#: Statuses a create may answer with the record that is already there.
CREATE_ANSWERS = frozenset({409})
#: Differing fields named in an audit row, at most.
MAX_DIFFERENCES = 20


@dataclasses.dataclass(frozen=True, slots=True)
class CallPlan:
    """One remote call of a push, decided but not sent.

    ``action``: create | update | unchanged (an update not worth sending) | delete |
    match. ``body`` is the transformed body (``UNDEFINED``: none), ``digest`` its
    hash (what the link stores once pushed). ``idempotency_key`` goes in the
    connector's idempotency header when it lists the action. ``match``: a create
    looks for an existing remote record with this call first.

    An action made of ``steps``: ``bodies`` holds each step's body by step name,
    ``digest`` their hash together, ``body`` that of its main step (a create's id step:
    what a found record is compared with); :meth:`PushPlanner.step` plans each step.
    """

    action: str
    call: CallSpec
    body: Any = UNDEFINED
    digest: str | None = None
    external_id: str | None = None
    idempotency_key: str | None = None
    match: CallPlan | None = None
    bodies: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Existing:
    """A remote record a create found already there, not made by this request.

    ``held`` is what the answer shows of it (the matched item, the replayed or
    conflicting record; ``None``: nothing); ``how`` says how we know, for the audit row.
    """

    external_id: str
    held: Any
    how: str


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
                      supported=[k for k in self.obj.push if k != MATCH], entity=self.entity,
                      create_pending=link is not None and link.create_pending)

    def unfinished_create(self, link: Link) -> bool:
        """Whether ``link`` is that of a create made of steps that stopped after its id
        step (the record linked, the steps done kept), which this push finishes: the
        connector's create still has steps and the instance may still create."""
        create = self.obj.push.get(CREATE)
        return (is_linked(link) and link.steps_done is not None and create is not None
                and bool(create.steps) and self.may(CREATE))

    def may(self, action: str) -> bool:
        """Whether the connector declares ``action`` and the instance may do it."""
        return action in self.obj.push and self.instance.is_permitted(self.entity, "push",
                                                                       action)

    def create(self, record: dict[str, Any], link: Link,
               context: TransformContext) -> CallPlan:
        """The create of ``record``, whose (claimed) link is ``link``; with the match to
        try first when the connector declares one and its ``when`` holds."""
        call = self.obj.push[CREATE]
        body, bodies = self._bodies(call, record, context)
        key = idempotency_key(self.instance.id, self.entity, self.record_id, CREATE, link.id,
                              link.last_pushed_at)
        return CallPlan(CREATE, call, body, payload_hash(bodies if bodies is not None
                                                         else body),
                        idempotency_key=key, match=self._match(record, context), bodies=bodies)

    def _match(self, record: dict[str, Any], context: TransformContext) -> CallPlan | None:
        call = self.obj.push.get(MATCH)
        if call is None or (call.when is not None and not call.when.evaluate(record)):
            return None
        return CallPlan(MATCH, call, self.body(call, record, context))

    def update(self, record: dict[str, Any], link: Link, context: TransformContext, *,
               force: bool = False) -> CallPlan:
        """The update of the remote record ``link`` points to; ``unchanged`` when the body
        hashes to what was pushed last, unless ``force`` (the remote record is known to
        hold something else)."""
        call = self.obj.push[UPDATE]
        body, bodies = self._bodies(call, record, context)
        digest = payload_hash(bodies if bodies is not None else body)
        action = UNCHANGED if digest == link.push_hash and not force else UPDATE
        return CallPlan(action, call, body, digest, link.external_id,
                        idempotency_key=self.message_id, bodies=bodies)

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

    def _bodies(self, call: CallSpec, record: dict[str, Any], context: TransformContext
                ) -> tuple[Any, dict[str, Any] | None]:
        """The call's body, and for an action made of steps each step's body by name
        (``None`` otherwise), the body being then its main step's. Every step's body is
        made before anything is sent: a record a transform fails on sends nothing."""
        if not call.steps:
            return self.body(call, record, context), None
        bodies = call.pushed_payload(record, context)
        main = call.main_step
        return bodies.get(main.name, UNDEFINED) if main is not None else UNDEFINED, bodies

    # -- steps --------------------------------------------------------------------------

    def step(self, plan: CallPlan, step: CallSpec, external_id: str | None) -> CallPlan:
        """The plan of one step of ``plan`` (an action made of steps): its body, the
        record's external id when known, and an idempotency key — the action's own for a
        create's id step, for any other step one derived from it and the step's name (a
        retried step sends the same key, two steps never share one)."""
        key = plan.idempotency_key
        if key is not None and step is not plan.call.id_step:
            key = idempotency_key(key, step.name)
        body = (plan.bodies or {}).get(step.name, UNDEFINED)
        return CallPlan(plan.action, step, body, None, external_id, idempotency_key=key)

    def check_steps(self, plan: CallPlan) -> None:
        """Check, before the first step is sent, the body of every step that is always
        sent (no ``when``) against its request schema: a record one of them refuses
        sends nothing (``SchemaViolation``). A step with a ``when``, or whose body reads
        earlier answers (``$steps``), is checked when it is reached."""
        for step in plan.call.steps:
            body = (plan.bodies or {}).get(step.name, UNDEFINED)
            if step.when is None and body is not UNDEFINED and not step.reads_answers:
                self._check(step, body, step=step.name)

    # -- a create whose answer was lost ---------------------------------------------------

    def create_sent(self, plan: CallPlan, record: dict[str, Any]) -> dict[str, Any]:
        """What a create leaves on its link before it goes out: its idempotency key, the
        record it was made from and the body it sends (when it has one)."""
        sent: dict[str, Any] = {"key": plan.idempotency_key, "record": record}
        if plan.body is not UNDEFINED:
            sent["body"] = plan.body
        return sent

    def find_lost_create(self, sent: dict[str, Any],
                         context: TransformContext) -> CallPlan | None:
        """How to find the remote record a create that sent ``sent`` (see ``create_sent``)
        may have made: the object's ``match`` for the record it was made from, when the
        connector declares one and its ``when`` holds (read-only: preferred); else that
        create again, same body, same idempotency key, when the connector sends keys on
        creates and the instance may create (the third party answers the record the key
        made, or makes it now);
        ``None`` when neither is possible."""
        record = sent.get("record")
        if isinstance(record, dict):
            match = self._match(record, context)
            if match is not None:
                return match
        if not self.keys_creates() or not self.may(CREATE) or not sent.get("key"):
            return None
        call = self.obj.push[CREATE]
        if call.steps:  # its id step, when no earlier step's captures feed it
            if call.id_step is not call.steps[0]:
                return None
            call = call.steps[0]
        if call.body is not None and "body" not in sent:
            return None  # not the same create
        body = sent.get("body", UNDEFINED)
        return CallPlan(CREATE, call, body, payload_hash(body) if body is not UNDEFINED
                        else None, idempotency_key=str(sent["key"]))

    def keys_creates(self) -> bool:
        """Whether creates carry the connector's idempotency header (the third party
        declares it honours keys)."""
        settings = self.connector.settings.get("idempotency") or {}
        return bool(settings.get("header")) and "create" in settings.get("actions",
                                                                         ["create"])

    # -- requests -------------------------------------------------------------------------

    def request(self, plan: CallPlan, data: dict[str, Any],
                context: TransformContext) -> RequestPlan:
        """The request for ``plan``: templates rendered from ``data`` (``record``,
        ``externalId``, ``before``), the body checked against the request schema
        (``SchemaViolation``), the idempotency header when the connector asks for it."""
        call = plan.call
        if plan.body is not UNDEFINED:
            self._check(call, plan.body, step=call.name or None)
        return plan_request(call, base_url=self.base_url, data=data, context=context,
                            body=plan.body,
                            extra_headers=self._idempotency_header(plan.action,
                                                                   plan.idempotency_key))

    def before_request(self, call: CallSpec, data: dict[str, Any],
                       context: TransformContext) -> RequestPlan:
        """The ``before`` call of ``call`` (``call.before``), rendered from ``data``."""
        assert call.before is not None
        return plan_request(call.before, base_url=self.base_url, data=data, context=context)

    def _check(self, call: CallSpec, body: Any, *, step: str | None = None) -> None:
        problems = self.checker.request_errors(call.operation, body)
        if problems:
            said = f"step {step!r}: " if step else ""
            raise SchemaViolation(
                f"{said}the {self.entity} would break the request schema of "
                f"{call.operation.key}: " + "; ".join(problems[:5]),
                details={"violations": problems, **({"step": step} if step else {})})

    def _idempotency_header(self, action: str, key: str | None) -> dict[str, str]:
        settings = self.connector.settings.get("idempotency") or {}
        if not key or not settings.get("header"):
            return {}
        if action not in settings.get("actions", ["create"]):
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

    def matched(self, match: CallSpec, response: Response) -> Existing | None:
        """The remote record a match answer names, ``None`` for none; raises
        ``AmbiguousMatch`` for several, ``RemoteProtocolError`` when the answer holds
        no array where the connector says."""
        found = pointer(response.body, match.option("records", ""))
        if not isinstance(found, list):
            raise RemoteProtocolError(f"the match response of {match.operation.key} has no "
                                      f"array at {match.option('records', '') or '/'}")
        where = match.option("externalId", self.obj.push_external_id)
        items = [(str(i), item) for item in found if (i := pointer(item, where)) is not None]
        if len(items) > 1:
            raise AmbiguousMatch(f"{len(items)} records of {match.operation.key} match this "
                                 f"{self.entity} ({', '.join(i for i, _ in items[:5])}); link "
                                 "it by hand or make the match stricter")
        if not items:
            return None
        external_id, item = items[0]
        return Existing(external_id, item, f"{response.request or match.operation.key} "
                                           f"found {external_id}")

    def existing(self, plan: CallPlan, response: Response) -> Existing | None:
        """The record a create answer says was already there, ``None`` for a record it
        made: a 409 naming it at the object's ``externalId`` pointer (raises the 409's
        ``RemoteConflict`` when it names none), the connector's replay header, or — with
        ``compareAnswer`` — an answer showing other values than those sent. Raises
        ``RemoteProtocolError`` when a replayed answer has no id."""
        settings = self.connector.settings.get("idempotency") or {}
        request = response.request or plan.call.operation.key
        if response.status in CREATE_ANSWERS:
            found = pointer(response.body, self._created_at(plan.call))
            if found in (None, ""):
                raise status_error(request, response.status, response.content)
            return Existing(str(found), response.body,
                            f"{request} answered {response.status}: {found} exists")
        header = settings.get("replayedHeader", REPLAYED_HEADER)
        if (response.headers.get(header) or "").strip().lower() in ("true", "1"):
            return Existing(self.created_id(plan.call, response), response.body,
                            f"{request} answered with the record its idempotency key made "
                            f"earlier ({header})")
        if settings.get("compareAnswer") and differences(plan.body, response.body):
            return Existing(self.created_id(plan.call, response), response.body,
                            f"{request} answered with other values than it sent "
                            "(idempotency key replayed)")
        return None

    def created_id(self, create: CallSpec, response: Response) -> str:
        """The id of the record a create answer describes; raises ``RemoteProtocolError``
        when the answer has none (the record may exist remotely all the same)."""
        where = self._created_at(create)
        found = pointer(response.body, where)
        if found in (None, ""):
            raise RemoteProtocolError(
                f"{create.operation.key} answered {response.status} without an id at {where}: "
                "the record may have been created; check before redelivering")
        return str(found)


    def is_remote_record(self, answer: Any, external_id: str) -> bool:
        """Whether an answer is the remote record ``external_id`` itself (an object with
        that id at the object's ``pull.externalId``), as a listing would show it."""
        found = pointer(answer, self.obj.pull_external_id) if isinstance(answer, dict) \
            else None
        return (isinstance(found, str | int) and not isinstance(found, bool)
                and str(found) == external_id)

    def _created_at(self, create: CallSpec) -> str:
        """Where a create answer holds the record's id (a JSON pointer)."""
        return create.option("externalId") or self.obj.push_external_id


def differences(sent: Any, held: Any) -> list[str] | None:
    """JSON pointers of the values of ``sent`` that ``held`` (what the third party shows
    of the record) holds differently; ``[]`` when it holds all it shows as sent; ``None``
    when it shows none of them (unknown).

    Objects are compared member by member: a member ``held`` lacks is unknown, not
    different (answers add ids and timestamps, list endpoints leave members out), and a
    ``null`` sent matches one absent. Arrays are compared item by item (a different
    length differs), numbers by value (``1`` = ``1.0``, ``true`` ≠ ``1``), anything else
    by equality.
    """
    if held is None or sent is UNDEFINED:
        return None
    found: list[str] = []
    return found if _compare(sent, held, "", found) else None


def _compare(sent: Any, held: Any, where: str, found: list[str]) -> bool:
    """Append the pointers under ``where`` where ``held`` differs from ``sent`` to
    ``found``; whether any value of ``sent`` was compared."""
    if isinstance(sent, dict) and isinstance(held, dict):
        compared = False
        for key, value in sent.items():
            if key in held:
                at = f"{where}/{str(key).replace('~', '~0').replace('/', '~1')}"
                compared = _compare(value, held[key], at, found) or compared
        return compared
    if isinstance(sent, list) and isinstance(held, list) and len(sent) == len(held):
        inner: list[str] = []
        for index, (mine, theirs) in enumerate(zip(sent, held, strict=True)):
            _compare(mine, theirs, f"{where}/{index}", inner)
        if inner:
            found.append(where or "/")
        return True
    if not _same(sent, held):
        found.append(where or "/")
    return True


def _same(sent: Any, held: Any) -> bool:
    if isinstance(sent, bool) or isinstance(held, bool):
        return sent is held
    if isinstance(sent, int | float) and isinstance(held, int | float):
        return sent == held
    return type(sent) is type(held) and sent == held


def is_linked(link: Link | None) -> bool:
    """Whether ``link`` pairs the record with a live remote record."""
    return link is not None and link.state == "linked" and link.external_id is not None


def pointer(document: Any, where: str) -> Any:
    """The value at JSON pointer ``where``, ``None`` when there is none."""
    try:
        return resolve_pointer(document, where)
    except (KeyError, ValueError):
        return None
