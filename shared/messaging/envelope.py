"""The sync message envelope (``schemas/sync-message.schema.json``): decode, validate, encode.

The schema is the contract. A compiled jsonschema validator checks it, but costs
about 100 µs a message — more than everything else the consumer does — so
:func:`decode_sync_message` takes a fast path first: msgspec parses the body
straight into a typed struct whose enums, patterns, lengths and bounds are read
from the schema document itself (:func:`_fast_decoder`), and what a type cannot
say — a canonical UUID, an RFC 3339 date-time, the field each direction requires —
is checked after (:func:`_complete`). A body it refuses goes the long way:
orjson, :data:`ENVELOPE_CHECK` (:func:`conforms`, a hand-written check of the same
rules on the parsed document), and jsonschema for what that refuses, which words the
reason. Both fast checks run only while the schema's rules are the ones they were
reviewed against (:data:`ENVELOPE_RULES_SHA256`) and ``SCHEMA_CHECKS`` allows it
(:mod:`shared.schema_check`); property tests hold both to never accepting what the
schema refuses.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Literal

import msgspec
import orjson

from shared.errors import InvalidMessage
from shared.json_pointer import join_pointer
from shared.message_context import MessageContext
from shared.schema_check import MAX_REASON_CHARS, PinnedSchemaCheck
from shared.schemas import load_schema

SCHEMA = "sync-message"
#: The schema's bounds on the envelope's counters (a unit test holds them equal): an
#: absurd value is refused at decode instead of reaching an ``integer`` column.
#: ``x-attempt`` headers share ``MAX_ATTEMPT`` (:func:`shared.messaging.codec.header_attempt`).
MAX_ATTEMPT = 1000
MAX_REDELIVERIES = 10_000
#: :func:`shared.schema_check.rules_sha256` of the schema :func:`conforms` was reviewed
#: against.
ENVELOPE_RULES_SHA256 = "b4aa9b577937622d64e489e2ed7a6b26f5a1a242866d8080d42e5c6007b8535f"


@dataclasses.dataclass(slots=True)
class SyncMessage:
    """One record to synchronize for one instance (what flows on sync.push / sync.pull).

    A value: treat it as immutable (not frozen only because a frozen dataclass
    costs microseconds per message to build); :meth:`with_attempt` makes copies.
    """

    id: str
    direction: str
    org_id: str
    instance_id: str
    entity: str
    action: str
    trigger: str
    attempt: int
    created_at: str
    record_id: str | None = None
    external_id: str | None = None
    record: dict[str, Any] | None = None
    run_id: str | None = None
    redeliveries: int = 0
    correlation_id: str | None = None

    def context(self) -> MessageContext:
        """The message's identifying fields (logs, audit row, dead-letter headers)."""
        context = MessageContext(self.id, self.org_id, self.instance_id, self.entity,
                                 self.direction, self.action, self.record_id,
                                 self.external_id, self.attempt, self.run_id,
                                 self.correlation_id)
        if self.redeliveries:  # a copy moved out of a dead queue (rare: not on the hot path)
            context.redeliveries = self.redeliveries
            context.trigger = self.trigger
        return context

    def with_attempt(self, attempt: int) -> SyncMessage:
        """The same message for its next attempt (same id)."""
        return dataclasses.replace(self, attempt=attempt)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, optional fields left out when empty."""
        data = {f: getattr(self, f) for f in _FIELDS}
        return {k: v for k, v in data.items() if v is not None}


_FIELDS = tuple(f.name for f in dataclasses.fields(SyncMessage))


def encode(message: SyncMessage) -> bytes:
    """The message as compact UTF-8 JSON."""
    return json.dumps(message.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()


def decode_sync_message(body: bytes, properties: Any = None) -> SyncMessage:
    """Parse and validate one envelope.

    ``properties`` (the AMQP properties) is accepted for symmetry with other
    decoders and not needed: the envelope is self-contained. Raises
    :class:`InvalidMessage` with the reason when the body is not JSON or breaks
    the envelope schema.
    """
    if ENVELOPE_CHECK.fast_enabled:
        message = _decode_fast(body)
        if message is not None:
            return message
    return decode_checked(body, ENVELOPE_CHECK)


def decode_checked(body: bytes, check: PinnedSchemaCheck) -> SyncMessage:
    """The long way: ``body`` parsed (orjson, else the standard library, which words
    the reason), judged by ``check``, and built. Raises :class:`InvalidMessage`."""
    try:
        doc = orjson.loads(body)
    except (orjson.JSONDecodeError, TypeError):
        doc = _loads_or_explain(body)
    check.check(doc)
    return _build(doc)


def _loads_or_explain(body: bytes) -> Any:
    """The standard library's verdict on a body orjson refused: it words the reason, and
    accepts the rare valid JSON orjson does not (integers beyond 64 bits)."""
    return loads_unicode(body, "not JSON")


def loads_unicode(body: bytes | str, subject: str) -> Any:
    """``body`` parsed by the standard library; ``InvalidMessage`` (``subject``: the
    reason) unless it is JSON, or naming where when a string is not Unicode text: an escaped
    lone surrogate (``"\\ud800"``) is valid JSON that no UTF-8 text can carry on, to
    PostgreSQL or in a retry copy."""
    try:  # JSON between systems is UTF-8 (RFC 8259)
        doc = json.loads(body.decode("utf-8") if type(body) is bytes else body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidMessage(f"{subject}: {_short(str(exc))}") from exc
    except RecursionError:
        raise InvalidMessage(f"{subject}: nested too deeply") from None
    try:
        where = lone_surrogate_at(doc)
    except RecursionError:
        raise InvalidMessage(f"{subject}: nested too deeply") from None
    if where is not None:
        raise InvalidMessage(f"the string at {where or '/'} holds a lone surrogate (an "
                             "escape such as \\ud800 that is not Unicode text)")
    return doc


def lone_surrogate_at(value: Any, at: str = "") -> str | None:
    """The JSON pointer of the first string (or key) holding a lone surrogate, or None."""
    if type(value) is str:
        return at if _SURROGATE.search(value) else None
    if type(value) is dict:
        for key, item in value.items():
            here = join_pointer(at, key)
            if _SURROGATE.search(key):
                return here
            found = lone_surrogate_at(item, here)
            if found is not None:
                return found
    elif type(value) is list:
        for index, item in enumerate(value):
            found = lone_surrogate_at(item, join_pointer(at, index))
            if found is not None:
                return found
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _build(doc: dict[str, Any]) -> SyncMessage:
    """The message of a checked envelope (its counters as ``int``: JSON Schema's
    "integer" accepts 3.0). Positional: half the cost of ``SyncMessage(**doc)``."""
    get = doc.get
    attempt, redeliveries = doc["attempt"], get("redeliveries", 0)
    if type(attempt) is not int:
        attempt = int(attempt)
    if type(redeliveries) is not int:
        redeliveries = int(redeliveries)
    return SyncMessage(doc["id"], doc["direction"], doc["org_id"], doc["instance_id"],
                       doc["entity"], doc["action"], doc["trigger"], attempt,
                       doc["created_at"], get("record_id"), get("external_id"), get("record"),
                       get("run_id"), redeliveries, get("correlation_id"))


def _decode_fast(body: bytes) -> SyncMessage | None:
    """The message when msgspec's typed parse and :func:`_complete` accept ``body``;
    ``None`` for the long way (which accepts or words the reason)."""
    try:
        e = _fast_decoder().decode(body)
    except (msgspec.DecodeError, TypeError, RecursionError):
        return None
    if not _complete(e):
        return None
    return SyncMessage(e.id, e.direction, e.org_id, e.instance_id, e.entity, e.action,
                       e.trigger, e.attempt, e.created_at, e.record_id, e.external_id,
                       e.record, e.run_id, e.redeliveries, e.correlation_id)


def _short(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


# --------------------------------------------------------------------------- fast check


@dataclasses.dataclass(frozen=True, slots=True)
class _Rules:
    properties: frozenset[str]
    required: frozenset[str]
    directions: frozenset[str]
    entities: frozenset[str]
    actions: frozenset[str]
    triggers: frozenset[str]
    id_pattern: re.Pattern[str]
    id_min: int
    id_max: int
    max_attempt: int
    max_redeliveries: int
    max_record_id: int
    max_external_id: int
    max_run_id: int
    max_correlation_id: int


@cache
def _rules() -> _Rules:
    s = load_schema(SCHEMA)
    props = s["properties"]
    org = props["org_id"]
    if org != props["instance_id"]:
        raise RuntimeError("fast path assumes org_id and instance_id share their rules")
    return _Rules(
        properties=frozenset(props),
        required=frozenset(s["required"]),
        directions=frozenset(props["direction"]["enum"]),
        entities=frozenset(props["entity"]["enum"]),
        actions=frozenset(props["action"]["enum"]),
        triggers=frozenset(props["trigger"]["enum"]),
        id_pattern=re.compile(org["pattern"]),
        id_min=org["minLength"],
        id_max=org["maxLength"],
        max_attempt=props["attempt"]["maximum"],
        max_redeliveries=props["redeliveries"]["maximum"],
        max_record_id=props["record_id"]["maxLength"],
        max_external_id=props["external_id"]["maxLength"],
        max_run_id=props["run_id"]["maxLength"],
        max_correlation_id=props["correlation_id"]["maxLength"],
    )


_DATE_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})", re.ASCII)
#: Canonical UUIDs only: stricter than jsonschema's check, which is fine — a message
#: the fast check rejects is judged by jsonschema itself.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def conforms(doc: Any) -> bool:
    """True only when ``doc`` satisfies the envelope schema.

    Never more lenient than jsonschema; it may be stricter on odd inputs (a UUID
    with braces), which then take the slow path. Written flat: it runs per message.
    """
    r = _rules()
    if type(doc) is not dict or not r.required.issubset(doc) or not r.properties.issuperset(doc):
        return False
    direction, entity, action = doc["direction"], doc["entity"], doc["action"]
    trigger, message_id, created = doc["trigger"], doc["id"], doc["created_at"]
    if not (type(direction) is str and type(entity) is str and type(action) is str
            and type(trigger) is str and type(message_id) is str and type(created) is str):
        return False
    if not (direction in r.directions and entity in r.entities and action in r.actions
            and trigger in r.triggers and _UUID.fullmatch(message_id) is not None
            and _ident(doc["org_id"], r) and _ident(doc["instance_id"], r)
            and _count(doc["attempt"], r.max_attempt) and _is_date_time(created)):
        return False
    get = doc.get
    record_id, external_id, record = get("record_id"), get("external_id"), get("record")
    run_id, correlation_id = get("run_id"), get("correlation_id")
    if not ((record_id is None or (type(record_id) is str
                                   and 0 < len(record_id) <= r.max_record_id))
            and (external_id is None or (type(external_id) is str
                                         and 0 < len(external_id) <= r.max_external_id))
            and (record is None or type(record) is dict)
            and (run_id is None or (type(run_id) is str and len(run_id) <= r.max_run_id))
            and (correlation_id is None or (type(correlation_id) is str
                                            and len(correlation_id) <= r.max_correlation_id))
            and ("redeliveries" not in doc
                 or _count(doc["redeliveries"], r.max_redeliveries))):
        return False
    if direction == "push":
        return type(record_id) is str
    return type(external_id) is str


@cache
def _fast_decoder() -> msgspec.json.Decoder[Any]:
    """A msgspec decoder of the envelope, typed from the schema's rules: unknown fields,
    a missing required one, a wrong type (``true`` or ``3.0`` for an integer), a value
    outside an enum, a pattern, a length or a bound, JSON that is not UTF-8 text (a lone
    surrogate) — each fails the parse. Strict where the schema is lenient (an integral
    float): such a body takes the long way."""
    r = _rules()
    ident = Annotated[str, msgspec.Meta(min_length=r.id_min, max_length=r.id_max,
                                        pattern=r.id_pattern.pattern)]

    def text(max_length: int, min_length: int = 0) -> Any:
        return Annotated[str, msgspec.Meta(min_length=min_length, max_length=max_length)] | None

    def count(maximum: int) -> Any:
        return Annotated[int, msgspec.Meta(ge=0, le=maximum)]

    def one_of(values: frozenset[str]) -> Any:
        return Literal[tuple(sorted(values))]

    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        ("id", str), ("direction", one_of(r.directions)), ("org_id", ident),
        ("instance_id", ident), ("entity", one_of(r.entities)),
        ("action", one_of(r.actions)), ("trigger", one_of(r.triggers)),
        ("attempt", count(r.max_attempt)), ("created_at", str),
        ("record_id", text(r.max_record_id, 1), None),
        ("external_id", text(r.max_external_id, 1), None),
        ("record", dict[str, Any] | None, None),
        ("run_id", text(r.max_run_id), None),
        ("redeliveries", count(r.max_redeliveries), 0),
        ("correlation_id", text(r.max_correlation_id), None),
    ]
    if {f[0] for f in fields} != r.properties or not r.required <= {
            f[0] for f in fields if len(f) == 2}:
        raise RuntimeError("the envelope's fast decoder does not cover the schema's properties")
    envelope = msgspec.defstruct("Envelope", fields, forbid_unknown_fields=True)
    return msgspec.json.Decoder(envelope)


def _complete(e: Any) -> bool:
    """What the fast decoder's types leave to check: the id a canonical UUID,
    ``created_at`` an RFC 3339 date-time, and the id each direction requires."""
    return (_UUID.fullmatch(e.id) is not None and _is_date_time(e.created_at)
            and (e.record_id if e.direction == "push" else e.external_id) is not None)


def _is_date_time(value: str) -> bool:
    """RFC 3339 date-time, upper-case T/Z, real calendar date, at most 6 decimals (so
    within the schema's 64 characters): stricter than jsonschema."""
    if _DATE_TIME.fullmatch(value) is None:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


#: org/instance ids seen valid: a handful of distinct values carry most of the traffic.
_VALID_IDENTS: set[str] = set()
_MAX_REMEMBERED = 10_000


def _ident(value: Any, r: _Rules) -> bool:
    if type(value) is not str:
        return False
    if value in _VALID_IDENTS:
        return True
    if r.id_min <= len(value) <= r.id_max and r.id_pattern.search(value) is not None:
        if len(_VALID_IDENTS) >= _MAX_REMEMBERED:
            _VALID_IDENTS.clear()
        _VALID_IDENTS.add(value)
        return True
    return False


def _count(value: Any, maximum: int) -> bool:
    """An integer from 0 to ``maximum``. JSON Schema's "integer" accepts 3.0; bool is
    not a number."""
    if type(value) is int:
        return 0 <= value <= maximum
    return type(value) is float and value.is_integer() and 0 <= value <= maximum


#: The envelope's check: :func:`conforms`, then jsonschema (formats asserted: uuid,
#: date-time) for what it refuses.
ENVELOPE_CHECK = PinnedSchemaCheck(SCHEMA, conforms, ENVELOPE_RULES_SHA256,
                                   subject="the envelope", formats=True)
