"""The compiled connector document: what the services work from.

A ``ConnectorDocument`` is built once per document load (``load_connector``):
operations resolved, transforms and templates compiled, lookups parsed. It is
immutable and shared by every instance of the connector; what differs per
instance (server, variables, credentials, lookup overrides) is applied at use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from shared.connector.answer_errors import AnswerErrorRule
from shared.connector.openapi import Operation
from shared.connector.problems import Problem
from shared.errors import MappingError
from shared.transform import (
    UNDEFINED,
    Expression,
    ExpressionRuntimeError,
    LookupTable,
    Template,
    Transform,
    TransformContext,
)
from shared.transform.helpers import HelperError
from shared.transform.transform import without_nulls

PUSH_ACTIONS = ("create", "update", "delete")
DEFAULT_EXTERNAL_ID = "/id"


@dataclasses.dataclass(frozen=True)
class CallSpec:
    """One configured call of an operation (a push write, a match, a list, a read…)."""

    kind: str  # create | update | delete | match | list | deleted | read | before | step
    pointer: str  # where it is declared in the bundle
    operation: Operation
    params: Mapping[str, Template]
    headers: Mapping[str, Template]
    body: Transform | None
    options: Mapping[str, Any]  # externalId, records, pagination, incremental, pageSize, capture
    before: CallSpec | None = None
    when: Expression | None = None  # match only: match only when this is true for the record
    answer_error: AnswerErrorRule | None = None  # errorPointer / errorWhen: a 200 that failed
    #: an action made of several requests, sent in order instead of this one: ``operation``
    #: is then that of its main step (``main_step``), ``params``/``headers``/``body`` empty
    steps: tuple[CallSpec, ...] = ()

    def option(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)

    @property
    def name(self) -> str:
        """A step's name (``""`` for any other call)."""
        return str(self.options.get("name", ""))

    def runs(self, data: Any) -> bool:
        """Whether a step is sent: it has no ``when``, or its ``when`` is true over
        ``data`` (what its templates see) as JSONata reads a condition — not undefined,
        null, false, 0, "" or empty. Raises ``MappingError`` when the ``when`` fails."""
        if self.when is None:
            return True
        try:
            value = self.when.evaluate(without_nulls(data))  # null is absent, as in templates
        except (ExpressionRuntimeError, HelperError) as exc:
            raise MappingError(f"step {self.name!r}: when {self.when.source!r}: {exc}") from None
        return bool(value) if isinstance(value, str | int | float | bool | list | dict) \
            else False

    @property
    def reads_answers(self) -> bool:
        """A step whose body reads the captures of the steps before it (``$steps``): made
        when the step is sent, checked then (``pushed_payload`` sees it without them)."""
        return self.body is not None and bool(self.body.answers)

    def pushed_payload(self, record: Any, context: TransformContext) -> Any:
        """What a push of ``record`` with this action sends, as its hash sees it: the
        body (``UNDEFINED`` without one), or for an action made of steps each step's body
        by step name — a body reading ``$steps`` made without it (the fields made of
        earlier answers left out: the hash follows the record, not the remote ids).
        Raises what the transforms raise."""
        if not self.steps:
            return self.body.apply(record, context) if self.body is not None else UNDEFINED
        return {step.name: step.body.apply(record, context)
                for step in self.steps if step.body is not None}

    @property
    def id_step(self) -> CallSpec | None:
        """The step of a create whose answer holds the created record's id (the one step
        that says ``externalId``); ``None`` for a call without steps."""
        return next((step for step in self.steps if "externalId" in step.options), None)

    @property
    def main_step(self) -> CallSpec | None:
        """The step that stands for the action's record: a create's id step, else the
        first step with a body (else the first step); ``None`` without steps. Its body
        and answer are what a push compares with a found record and hashes for the
        pull side."""
        if not self.steps:
            return None
        return (self.id_step or next((s for s in self.steps if s.body is not None), None)
                or self.steps[0])


@dataclasses.dataclass(frozen=True)
class SyncObject:
    """One synchronized module: a BSS entity and how it maps to the third party."""

    name: str
    entity: str
    description: str | None
    conflict: str
    push: Mapping[str, CallSpec]  # create / update / delete / match, those declared
    push_external_id: str
    pull_list: CallSpec | None
    pull_read: CallSpec | None
    pull_body: Transform | None
    pull_external_id: str
    pull_deleted: Expression | None
    pull_deleted_list: CallSpec | None = None  # lists the ids of deleted records

    def call(self, direction: str, kind: str) -> CallSpec | None:
        """The call for ``kind`` (create, update, delete, match, list, deleted, read)."""
        if direction == "push":
            return self.push.get(kind)
        return {"list": self.pull_list, "deleted": self.pull_deleted_list,
                "read": self.pull_read}.get(kind)


@dataclasses.dataclass(frozen=True)
class ConnectorDocument:
    """A loaded, valid connector document."""

    document: dict[str, Any]  # the bundle: specs joined, overlay applied
    sha256: str
    title: str
    version: str
    sources: tuple[str, ...]
    operations: Mapping[str, Operation]
    objects: Mapping[str, SyncObject]
    transforms: Mapping[str, Transform]
    lookups: Mapping[str, LookupTable]
    dependencies: Mapping[str, tuple[str, ...]]
    settings: Mapping[str, Any]  # rateLimit, idempotency, timeouts, variables (raw)
    warnings: tuple[Problem, ...] = ()

    @property
    def sync(self) -> dict[str, Any]:
        return self.document.get("x-synchronization") or {}

    @property
    def openapi_version(self) -> str:
        return str(self.document.get("openapi"))

    def object(self, name: str) -> SyncObject:
        """The object called ``name``; raises ``KeyError`` listing the known ones."""
        try:
            return self.objects[name]
        except KeyError:
            raise KeyError(f"no object {name!r}; objects: {', '.join(self.objects)}") from None

    def objects_for(self, entity: str) -> list[SyncObject]:
        return [o for o in self.objects.values() if o.entity == entity]

    def servers(self) -> list[dict[str, Any]]:
        servers = self.document.get("servers")
        return [s for s in servers if isinstance(s, dict)] if isinstance(servers, list) else []

    def security_schemes(self) -> dict[str, Any]:
        components = self.document.get("components") or {}
        schemes = components.get("securitySchemes") or {}
        return schemes if isinstance(schemes, dict) else {}

    def variables(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Server variable defaults, then declared variable defaults, then ``overrides``
        (an instance's values): what ``$var(name)`` sees."""
        values: dict[str, Any] = {}
        for server in self.servers()[:1]:
            for name, spec in (server.get("variables") or {}).items():
                if isinstance(spec, dict) and "default" in spec:
                    values[name] = spec["default"]
        for name, spec in (self.settings.get("variables") or {}).items():
            if isinstance(spec, dict) and "default" in spec:
                values[name] = spec["default"]
        values.update(overrides or {})
        return values

    def summary(self) -> str:
        """One line: title, version, objects with their directions."""
        parts = []
        for obj in self.objects.values():
            directions = "/".join(
                d for d, ok in (("push", bool(obj.push)), ("pull", obj.pull_list is not None)) if ok
            )
            parts.append(f"{obj.name}({obj.entity}, {directions})")
        return (
            f"{self.title} {self.version} — OpenAPI {self.openapi_version}, "
            f"{len(self.objects)} object(s): {', '.join(parts)}; "
            f"{len(self.transforms)} transform(s), sha256 {self.sha256[:12]}"
        )
