"""Compiling the objects of ``x-synchronization`` and their calls, and the whole block.

:func:`compile_sync` is the one pass that checks and compiles a bundle's
``x-synchronization`` against its OpenAPI document: every operation reference is
resolved, every parameter, header and body checked against the operation, every
mapped field checked against the schema it must fit, the entity dependencies
checked for cycles — and every problem is recorded with its pointer instead of
stopping at the first. The meta-schema (``schemas/connector.schema.json``) has
been checked before; this pass still never trusts a shape it did not check
itself, so a broken block yields problems, never a traceback. Expressions,
templates and transforms are compiled by :mod:`shared.connector.transform_compiler`,
map targets checked by :mod:`shared.connector.map_targets`.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from typing import Any

from shared.connector.answer_errors import AnswerErrorRule
from shared.connector.answer_pointers import answer_pointer_problems
from shared.connector.document import DEFAULT_EXTERNAL_ID, PUSH_ACTIONS, CallSpec, SyncObject
from shared.connector.form_body import MULTIPART, form_media
from shared.connector.map_targets import TargetChecks
from shared.connector.openapi import Operation, deref, find_operation
from shared.connector.problems import Problem
from shared.connector.source import resolve_pointer
from shared.connector.step_compiler import StepsCompiler
from shared.connector.transform_compiler import SYNC, TransformCompiler, as_mapping
from shared.json_pointer import join_pointer
from shared.schemas import ENTITIES
from shared.transform import Expression, LookupTable, Template, Transform

#: Names a template may start with, per kind of call.
TEMPLATE_ROOTS = {
    "create": ("record", "before"),
    "update": ("record", "externalId", "before"),
    "delete": ("record", "externalId", "before"),
    "match": ("record",),
    "list": ("since", "cursor", "pageSize"),
    "deleted": ("since", "cursor", "pageSize"),
    "read": ("externalId",),
    "before": ("record", "externalId"),
}

#: Kinds of call that are listings (pagination, incremental, records).
LIST_KINDS = ("list", "deleted")

EntitySchema = Callable[[str], Any]
"""The fully inlined canonical JSON Schema of an entity."""


@dataclasses.dataclass(frozen=True, slots=True)
class CompiledSync:
    """What :func:`compile_sync` made of a bundle, and every problem it found."""

    objects: dict[str, SyncObject]
    transforms: dict[str, Transform]
    lookups: dict[str, LookupTable]
    problems: list[Problem]


def compile_sync(document: dict[str, Any], operations: Mapping[str, Operation],
                 entity_schema: EntitySchema) -> CompiledSync:
    """Compile ``document``'s ``x-synchronization``: transforms first, then the objects
    that use them. Never raises for a malformed block: its problems are returned."""
    problems: list[Problem] = []
    transforms = TransformCompiler(document, problems)
    transforms.compile()
    objects = ObjectCompiler(document, operations, entity_schema, transforms).compile()
    transforms.report_unused()
    return CompiledSync(objects, transforms.transforms, transforms.lookups, problems)


class ObjectCompiler:
    """Compiles the objects of one bundle and their calls, with ``transforms``' help."""

    def __init__(self, document: dict[str, Any], operations: Mapping[str, Operation],
                 entity_schema: EntitySchema, transforms: TransformCompiler) -> None:
        self.document = document
        self.operations = operations
        self.entity_schema = entity_schema
        self.transforms = transforms
        self.sync = transforms.sync
        self.problems = transforms.problems
        self._targets = TargetChecks()

    def compile(self) -> dict[str, SyncObject]:
        """Every object that compiles, by name; then the dependency and target checks."""
        objects = {}
        for name, spec in as_mapping(self.sync.get("objects")).items():
            if isinstance(spec, dict):
                obj = self._compile_object(name, spec, join_pointer(SYNC, "objects", name))
                if obj is not None:
                    objects[name] = obj
        self._check_dependencies()
        self.problems += self._targets.problems()
        return objects

    def _problem(self, pointer: str, message: str, severity: str = "error") -> None:
        self.problems.append(Problem(pointer, message, severity=severity))

    def _expression(self, source: str, pointer: str) -> Expression | None:
        return self.transforms.expression(source, pointer)

    def _template(self, value: Any, pointer: str, kind: str,
                  roots: tuple[str, ...] | None = None) -> Template | None:
        return self.transforms.template(value, pointer, kind,
                                        roots if roots is not None
                                        else TEMPLATE_ROOTS.get(kind, ()))

    def _compile_object(self, name: str, spec: dict[str, Any], pointer: str) -> SyncObject | None:
        entity = spec.get("entity")  # an unknown entity is reported by the meta-schema;
        # the object is still checked so that every other problem shows too.
        push: dict[str, CallSpec] = {}
        push_spec = as_mapping(spec.get("push"))
        for kind in ("create", "update", "delete", "match"):
            if isinstance(push_spec.get(kind), dict):
                call = self._call(
                    kind,
                    push_spec[kind],
                    join_pointer(pointer, "push", kind),
                    body_target="request",
                )
                if call is not None:
                    push[kind] = call
        if "update" in push_spec and "create" not in push_spec and "match" not in push_spec:
            self._problem(
                join_pointer(pointer, "push"),
                "push has 'update' but neither 'create' "
                "nor 'match': records could never get linked",
                severity="warning",
            )
        pull_spec = as_mapping(spec.get("pull"))
        pull_list = pull_read = pull_body = pull_deleted = pull_deleted_list = None
        if pull_spec:
            pull_pointer = join_pointer(pointer, "pull")
            if isinstance(pull_spec.get("list"), dict):
                pull_list = self._call(
                    "list",
                    pull_spec["list"],
                    join_pointer(pull_pointer, "list"),
                    body_target="request",
                )
            if isinstance(pull_spec.get("deletedList"), dict):
                pull_deleted_list = self._call(
                    "deleted",
                    pull_spec["deletedList"],
                    join_pointer(pull_pointer, "deletedList"),
                    body_target="request",
                )
            if isinstance(pull_spec.get("read"), dict):
                pull_read = self._call(
                    "read", pull_spec["read"], join_pointer(pull_pointer, "read"), body_target=None
                )
            pull_body = self._body(
                pull_spec.get("body"),
                join_pointer(pull_pointer, "body"),
                schema=self.entity_schema(entity) if entity in ENTITIES else None,
                document=None,
                what=f"the canonical {entity} schema",
            )
            if pull_body is not None and pull_body.answers:
                self._answers_outside_steps(pull_body, join_pointer(pull_pointer, "body"))
            if isinstance(pull_spec.get("deleted"), str):
                pull_deleted = self._expression(
                    pull_spec["deleted"], join_pointer(pull_pointer, "deleted")
                )
        self.problems += answer_pointer_problems(
            self.document, pointer, push, push_spec,
            {"list": pull_list, "read": pull_read, "deletedList": pull_deleted_list},
            pull_spec)
        if entity not in ENTITIES:
            return None
        return SyncObject(
            name=name,
            entity=entity,
            description=spec.get("description"),
            conflict=spec.get("conflict", "bss-wins"),
            push=push,
            push_external_id=push_spec.get("externalId", DEFAULT_EXTERNAL_ID),
            pull_list=pull_list,
            pull_read=pull_read,
            pull_body=pull_body,
            pull_external_id=pull_spec.get("externalId", DEFAULT_EXTERNAL_ID),
            pull_deleted=pull_deleted,
            pull_deleted_list=pull_deleted_list,
        )

    def _answers_outside_steps(self, body: Transform, pointer: str) -> None:
        """``$steps`` is bound only for a step's body (the captures of the steps before
        it): elsewhere a transform reading it would always send the fields made of it
        empty."""
        self._problem(pointer, f"transform {body.name} reads $steps, which only the body "
                               "of a push action's step has (the captures of the steps "
                               "before it); here it is always empty")

    def _call(
        self, kind: str, spec: dict[str, Any], pointer: str, body_target: str | None,
        roots: tuple[str, ...] | None = None,
    ) -> CallSpec | None:
        """One call (``roots``: the names its templates may start with, when not the
        kind's own); an action with ``steps`` is compiled by :mod:`.step_compiler`."""
        if kind in PUSH_ACTIONS and isinstance(spec.get("steps"), list):
            return StepsCompiler(self).compile(kind, spec, pointer)
        reference = spec.get("operation")
        if not isinstance(reference, str):
            return None  # reported by the meta-schema
        operation = find_operation(self.operations, reference)
        if operation is None:
            self._unknown_operation(reference, join_pointer(pointer, "operation"))
            return None
        params = self._params(
            kind, operation, as_mapping(spec.get("params")), pointer,
            extra_headers=as_mapping(spec.get("headers")), roots=roots,
        )
        headers = {}
        for header, value in as_mapping(spec.get("headers")).items():
            template = self._template(value, join_pointer(pointer, "headers", header), kind,
                                      roots)
            if template is not None:
                headers[header] = template
        body = None
        if "body" in spec:
            if operation.request_body is None:
                self._problem(
                    join_pointer(pointer, "body"),
                    f"operation {operation.key} takes no request body",
                )
            else:
                body = self._body(
                    spec["body"],
                    join_pointer(pointer, "body"),
                    schema=operation.request_schema,
                    document=self.document,
                    what=f"the request schema of {operation.key}",
                )
                if body is not None:
                    self._check_form_fields(operation, body)
                    if body.answers and not kind.endswith(" step"):
                        self._answers_outside_steps(body, join_pointer(pointer, "body"))
        elif (
            kind in ("create", "update", "create step", "update step")
            and operation.request_body is not None
            and operation.request_body.get("required")
        ):
            self._problem(
                pointer,
                f"operation {operation.key} requires a request body: set 'body' to a transform",
            )
        before = None
        if isinstance(spec.get("before"), dict):
            before = self._call(
                "before", spec["before"], join_pointer(pointer, "before"), body_target=None
            )
        if kind in LIST_KINDS:
            self._check_list_params(operation, spec, pointer)
        when = None
        if isinstance(spec.get("when"), str):
            when = self._expression(spec["when"], join_pointer(pointer, "when"))
        options = {
            k: v
            for k, v in spec.items()
            if k not in ("operation", "params", "headers", "body", "before", "description", "when",
                         "errorPointer", "errorWhen")
        }
        return CallSpec(kind, pointer, operation, params, headers, body, options, before, when,
                        self._answer_error(spec, pointer))

    def _answer_error(self, spec: dict[str, Any], pointer: str) -> AnswerErrorRule | None:
        """The call's ``errorPointer`` / ``errorWhen`` (shapes checked by the meta-schema)."""
        where = spec.get("errorPointer")
        when = None
        if isinstance(spec.get("errorWhen"), str):
            when = self._expression(spec["errorWhen"], join_pointer(pointer, "errorWhen"))
        if not isinstance(where, str) and when is None:
            return None
        return AnswerErrorRule(where if isinstance(where, str) else None, when)

    def _unknown_operation(self, reference: str, pointer: str) -> None:
        candidates = sorted({k for k in self.operations})
        hint = difflib.get_close_matches(reference, candidates, n=1, cutoff=0.6)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        self._problem(
            pointer,
            f"unknown operation {reference!r}: no operationId or "
            f'"METHOD /path" in the document matches{suggestion}',
        )

    def _params(
        self,
        kind: str,
        operation: Operation,
        given: dict[str, Any],
        pointer: str,
        extra_headers: dict[str, Any],
        roots: tuple[str, ...] | None = None,
    ) -> dict[str, Template]:
        params = {}
        for name, value in given.items():
            where = join_pointer(pointer, "params", name)
            if operation.parameter(name) is None:
                declared = ", ".join(p.get("name", "?") for p in operation.parameters) or "none"
                self._problem(
                    where,
                    f"operation {operation.key} has no parameter {name!r} "
                    f"(its parameters: {declared}); use 'headers' for extra headers",
                )
                continue
            template = self._template(value, where, kind, roots)
            if template is not None:
                params[name] = template
        for name in operation.path_parameter_names():
            if name not in given:
                self._problem(
                    join_pointer(pointer, "params"),
                    f"path parameter {name!r} of {operation.key} is never provided: "
                    f"add params.{name}",
                )
        for param in operation.parameters:
            if (
                param.get("required")
                and param.get("in") in ("query", "header")
                and param.get("name") not in given
                and not self._filled_by_list(kind, param.get("name"), pointer)
                and not self._sent_anyway(operation, param, extra_headers)
            ):
                self._problem(
                    join_pointer(pointer, "params"),
                    f"required {param['in']} parameter {param['name']!r} of "
                    f"{operation.key} is never provided",
                )
        return params

    def _sent_anyway(
        self, operation: Operation, param: dict[str, Any], extra_headers: dict[str, Any]
    ) -> bool:
        """Whether a required header parameter the call's ``params`` leave out is sent all
        the same: named in its ``headers``, or the credential itself (an apiKey scheme
        the operation accepts, sent in a header of that name — HTTP header names are
        case-insensitive)."""
        if param.get("in") != "header" or not isinstance(param.get("name"), str):
            return False
        name = param["name"].lower()
        if any(str(header).lower() == name for header in extra_headers):
            return True
        return any(
            scheme.get("type") == "apiKey"
            and scheme.get("in") == "header"
            and str(scheme.get("name", "")).lower() == name
            for scheme in self._accepted_schemes(operation)
        )

    def _accepted_schemes(self, operation: Operation) -> list[dict[str, Any]]:
        """The security schemes any of ``operation``'s requirements names."""
        requirements = operation.raw.get("security")
        if requirements is None:
            requirements = self.document.get("security")
        components = as_mapping(self.document.get("components"))
        schemes = as_mapping(components.get("securitySchemes"))
        named = {
            name
            for requirement in (requirements if isinstance(requirements, list) else [])
            if isinstance(requirement, dict)
            for name in requirement
        }
        found = [deref(self.document, schemes.get(name)) for name in sorted(named)]
        return [scheme for scheme in found if isinstance(scheme, dict)]

    def _filled_by_list(self, kind: str, name: Any, pointer: str) -> bool:
        return kind in LIST_KINDS and name in self._list_param_names(pointer)

    def _list_param_names(self, pointer: str) -> set[str]:
        try:
            spec = resolve_pointer(self.document, pointer)
        except (KeyError, ValueError):
            return set()
        names = set()
        pagination = as_mapping(spec.get("pagination"))
        incremental = as_mapping(spec.get("incremental"))
        for key in ("param", "sizeParam", "limitParam"):
            if isinstance(pagination.get(key), str) and pagination.get("in", "query") == "query":
                names.add(pagination[key])
        if isinstance(incremental.get("param"), str) and incremental.get("in", "query") == "query":
            names.add(incremental["param"])
        return names

    def _check_list_params(self, operation: Operation, spec: dict[str, Any], pointer: str) -> None:
        for name in sorted(self._list_param_names(pointer)):
            if operation.parameter(name) is None:
                self._problem(
                    pointer,
                    f"list parameter {name!r} is not declared by "
                    f"{operation.key}; declare it in the document "
                    "(or with the overlay)",
                    severity="warning",
                )
        pagination = as_mapping(spec.get("pagination"))
        incremental = as_mapping(spec.get("incremental"))
        if incremental.get("in") == "client" and "param" in incremental:
            self._problem(
                join_pointer(pointer, "incremental", "param"),
                "incremental 'in: client' sends no since value: drop 'param' (discovery "
                "drops the listed records changed before since itself)",
            )
        needs_body = "body" in (pagination.get("in"), incremental.get("in"))
        if needs_body and "body" not in spec:
            self._problem(
                pointer,
                "pagination or incremental 'in: body' needs a list 'body' "
                "transform (its input has since, cursor, pageSize)",
            )

    def _check_form_fields(self, operation: Operation, body: Transform) -> None:
        """Warn at each mapped field a form body cannot carry as the operation's
        ``encoding`` stands (the encoder refuses such a record at run time)."""
        media = form_media(operation.request_media_type)
        if media is None:
            return
        schema = deref(self.document, operation.request_schema)
        properties = as_mapping(schema.get("properties")) if isinstance(schema, dict) else {}
        for rule in body.fields:
            name = rule.target[0]
            entry = as_mapping(operation.request_encoding.get(name))
            if entry.get("style") == "deepObject" or (
                    media == MULTIPART and "style" not in entry and "explode" not in entry):
                continue
            style = str(entry.get("style") or "form")
            prop = deref(self.document, properties.get(name))
            items = deref(self.document, prop.get("items")) if isinstance(prop, dict) else None
            if len(rule.target) >= 3 and not isinstance(rule.target[1], int):
                what = "an object inside an object"
            elif isinstance(items, dict) and items.get("type") in ("object", "array"):
                what = f"a list of {items['type']}s"
            else:
                continue
            self._problem(
                join_pointer(SYNC, "transforms", rule.origin or body.name, "map", rule.name),
                f"{operation.key} sends its body as {media}, where {what} has no encoding "
                f"in style {style!r}: declare style deepObject for {name!r} in the "
                "operation's encoding (an overlay can), or the record fails when sent",
                severity="warning",
            )

    def _body(
        self, name: Any, pointer: str, schema: Any, document: dict[str, Any] | None, what: str
    ) -> Transform | None:
        if not isinstance(name, str):
            return None
        transform = self.transforms.use(name, pointer)
        if transform is None:
            return None
        if schema is not None:
            self._targets.check(document, schema, transform, what)
        return transform

    def _check_dependencies(self) -> None:
        graph = {
            k: [e for e in v if isinstance(e, str)]
            for k, v in as_mapping(self.sync.get("dependencies")).items()
            if isinstance(v, list)
        }
        for entity, needs in graph.items():
            if entity in needs:
                self._problem(
                    join_pointer(SYNC, "dependencies", entity), f"{entity} cannot depend on itself"
                )
        for start in graph:
            path = _cycle_from(graph, start)
            if path and path[0] == start and min(path) == start:
                self._problem(
                    join_pointer(SYNC, "dependencies", start),
                    "dependency cycle: " + " → ".join([*path, start]),
                )


def _cycle_from(graph: dict[str, list[str]], start: str) -> list[str] | None:
    stack = [(start, [start])]
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, []):
            if nxt == start and len(path) > 1:
                return path
            if nxt not in path:
                stack.append((nxt, [*path, nxt]))
    return None
