"""Planning one pull: every choice between the reads and the writes (pure, no I/O).

``RecordPull`` (services.puller.pull) does the I/O — claim, read, write, record — in
the order of docs/architecture.md §5; what is decided in between is decided here,
from values alone:

    external id   where the record says its id (``pull.externalId``)
    deleted       the message says so, or the object's ``pull.deleted`` expression
    canonical     the ``pull.body`` transform → the canonical entity (``$bssId`` reads
                  links from the ``PreloadedLinks`` given: ``LinksNotLoaded`` asks the
                  caller to load them and plan again)
    valid         the canonical entity against ``schemas/entities/<entity>``: every
                  violation, each with its JSON pointer, in one ``SchemaViolation``
    hash          what the link keeps as pulled; equal → ``unchanged``, nothing written
    holds         the BSS record holds the canonical entity already (merging it would
                  change nothing): a record we pushed, listed again → ``unchanged``
    key           the ``Idempotency-Key`` of a create: the same for every delivery of
                  one create, so a redelivered create is answered with the first record

Errors are ``shared.errors``: ``MappingError``, ``SchemaViolation``,
``ConfigurationError``, ``DependencyPending``.
"""

from __future__ import annotations

import uuid
from typing import Any

from jsonschema import ValidationError

from services.puller.decide import PullDecision, decide
from services.pusher.plan import payload_hash
from shared.connector import SyncObject
from shared.connector.source import resolve_pointer
from shared.errors import ConfigurationError, MappingError, SchemaViolation
from shared.schema_errors import explaining_branch, located_sentences
from shared.schemas import schema_uri, validator
from shared.storage.links import Link
from shared.transform import UNDEFINED, ExpressionRuntimeError, TransformContext

#: Namespace of the idempotency keys of pulled creates.
KEY_NAMESPACE = uuid.UUID("5b0f4d3c-4b7e-4f1a-9d8e-0c1f2a3b4c5d")
#: Violations named in one error, at most (the rest are counted).
MAX_VIOLATIONS = 10

__all__ = ["PullDecision", "PullPlanner", "canonical_hash", "decide", "holds",
           "idempotency_key"]


def canonical_hash(entity: dict[str, Any]) -> str:
    """Content hash of a canonical entity as pulled (the pusher's payload hash)."""
    return payload_hash(entity)


def holds(current: Any, patch: Any) -> bool:
    """Whether merge-patching ``current`` (the BSS record) with ``patch`` (the canonical
    entity, RFC 7386 as the puller writes it) would change nothing: every member of
    ``patch`` is in ``current`` with the same value (a ``null`` matching one absent),
    objects member by member, anything else by equality of type and value (``1`` =
    ``1.0``, ``true`` ≠ ``1``)."""
    if isinstance(patch, dict):
        if not isinstance(current, dict):
            return False
        return all(current.get(key) is None if value is None else
                   key in current and holds(current[key], value)
                   for key, value in patch.items())
    if isinstance(patch, list):
        return (isinstance(current, list) and len(current) == len(patch)
                and all(_equal(a, b) for a, b in zip(current, patch, strict=True)))
    return _equal(current, patch)


def _equal(current: Any, value: Any) -> bool:
    """JSON equality: numbers by value, booleans only to booleans, objects and arrays
    whole (an array item is replaced, not merged; a ``null`` member is one absent)."""
    if isinstance(value, bool) or isinstance(current, bool):
        return current is value
    if isinstance(value, int | float) and isinstance(current, int | float):
        return current == value
    if isinstance(value, dict):
        if not isinstance(current, dict):
            return False
        mine = {k: v for k, v in current.items() if v is not None}
        theirs = {k: v for k, v in value.items() if v is not None}
        return mine.keys() == theirs.keys() and all(_equal(mine[k], v)
                                                    for k, v in theirs.items())
    if isinstance(value, list):
        return (isinstance(current, list) and len(current) == len(value)
                and all(_equal(a, b) for a, b in zip(current, value, strict=True)))
    return type(current) is type(value) and current == value


def idempotency_key(instance_id: str, entity: str, external_id: str, link: Link) -> str:
    """The ``Idempotency-Key`` of the BSS create for this link row.

    Every delivery working on one create sees the same row (its id and its last sync
    stamps do not change until the create is linked), so a redelivery replays the
    first create's answer. A record created again after a delete gets a new key: the
    row's stamps changed in between.
    """
    stamps = f"{link.last_pulled_at}:{link.last_pushed_at}"
    return str(uuid.uuid5(KEY_NAMESPACE,
                          f"{instance_id}:{entity}:{external_id}:{link.id}:{stamps}"))


class PullPlanner:
    """The choices of one pull of one object's external record."""

    def __init__(self, obj: SyncObject) -> None:
        self.obj = obj
        self.entity = obj.entity

    def external_id(self, record: dict[str, Any]) -> str:
        """The record's id in the third party. Raises ``MappingError``."""
        try:
            value = resolve_pointer(record, self.obj.pull_external_id)
        except KeyError:
            raise MappingError(f"the external {self.entity} has no id at "
                               f"{self.obj.pull_external_id or '/'}") from None
        if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
            raise MappingError(f"the external {self.entity}'s id at "
                               f"{self.obj.pull_external_id} is not a string or a number")
        return str(value)

    def deleted(self, record: dict[str, Any] | None, action: str) -> bool:
        """Whether the third party shows the record as deleted. Raises ``MappingError``."""
        if action == "delete":
            return True
        if record is None or self.obj.pull_deleted is None:
            return False
        try:
            value = self.obj.pull_deleted.evaluate(record)
        except ExpressionRuntimeError as exc:
            raise MappingError(f"pull.deleted of {self.obj.name} failed on the record: "
                               f"{exc}") from exc
        return value is not UNDEFINED and bool(value)

    def decide(self, *, deleted: bool, link: Link | None, permitted: list[str],
               bss_exists: bool = True) -> PullDecision:
        linked = link is not None and link.state == "linked" and link.bss_id is not None
        return decide(deleted=deleted, linked=linked, permitted=permitted,
                      entity=self.entity, bss_exists=bss_exists)

    def canonical(self, record: dict[str, Any], context: TransformContext) -> dict[str, Any]:
        """The canonical entity for ``record``, checked against its schema.

        Raises ``ConfigurationError`` (no ``pull.body``), ``MappingError``,
        ``DependencyPending`` (a ``$bssId`` parent not linked yet), ``LinksNotLoaded``,
        ``SchemaViolation``.
        """
        if self.obj.pull_body is None:
            raise ConfigurationError(f"object {self.obj.name} declares no pull.body")
        entity = self.obj.pull_body.apply(record, context)
        self.check(entity)
        return entity

    def check(self, entity: dict[str, Any]) -> None:
        """Raise ``SchemaViolation`` naming every violation of the entity schema with its
        JSON pointer (in the message: it becomes the dead letter's ``x-error``)."""
        name = f"entities/{self.entity}"
        found = located_sentences(_leaf(e) for e in validator(name).iter_errors(entity))
        if not found:
            return
        shown = "; ".join(f"{f.pointer or '/'}: {f.sentence}" for f in found[:MAX_VIOLATIONS])
        more = len(found) - MAX_VIOLATIONS
        if more > 0:
            shown += f"; and {more} more"
        raise SchemaViolation(
            f"the {self.entity} made of the external record breaks "
            f"{schema_uri(name).rsplit('/', 2)[-2]}/{self.entity}.schema.json: {shown}",
            details={"violations": [{"pointer": f.pointer, "detail": f.sentence}
                                    for f in found[:MAX_VIOLATIONS]]})


def _leaf(error: ValidationError) -> ValidationError:
    """For ``anyOf [definition, null]`` the definition's own complaint, not "no branch"
    (optional fields of the entity schemas accept null)."""
    if error.validator in ("anyOf", "oneOf") and error.context:
        deepest = explaining_branch(error)
        if deepest is not None:
            return _leaf(deepest)
    return error
