"""Checking and compiling ``x-synchronization`` against its OpenAPI document.

One pass does both: every operation reference is resolved, every expression and
template compiled, every mapped field checked against the schema it must fit —
and every problem is recorded with its pointer instead of stopping at the first.
The meta-schema (``schemas/connector.schema.json``) has been checked before; this
pass still never trusts a shape it did not check itself, so a broken block
yields problems, never a traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

from shared.connector.document import (
    DEFAULT_EXTERNAL_ID,
    CallSpec,
    SyncObject,
)
from shared.connector.openapi import Operation, find_operation, schema_has_path
from shared.connector.problems import Problem
from shared.json_pointer import join_pointer
from shared.schemas import ENTITIES
from shared.transform import (
    Expression,
    ExpressionSyntaxError,
    LookupTable,
    Template,
    TemplateSyntaxError,
    Transform,
    compile_expression,
    compile_template,
)
from shared.transform.expressions import (
    UNDEFINED,
    bound_names,
    builtin_function_names,
    function_calls,
)
from shared.transform.helpers import ENTITY_HELPERS, HELPERS, TABLE_HELPERS
from shared.transform.transform import FieldRule

SYNC = "/x-synchronization"

#: Names a template may start with, per kind of call.
TEMPLATE_ROOTS = {
    "create": ("record", "before"),
    "update": ("record", "externalId", "before"),
    "delete": ("record", "externalId", "before"),
    "match": ("record",),
    "list": ("since", "cursor", "pageSize"),
    "read": ("externalId",),
    "before": ("record", "externalId"),
}


class Compiler:
    """Compiles one bundle's ``x-synchronization``; read ``problems`` afterwards."""

    def __init__(
        self, document: dict[str, Any], operations: Mapping[str, Operation], entity_schema: Any
    ) -> None:
        self.document = document
        self.operations = operations
        self.entity_schema = entity_schema  # callable: entity -> fully inlined JSON schema
        self.sync: dict[str, Any] = _mapping(document.get("x-synchronization"))
        self.problems: list[Problem] = []
        self.transforms: dict[str, Transform] = {}
        self.lookups: dict[str, LookupTable] = {}
        self.used_transforms: set[str] = set()
        self._builtins = builtin_function_names()
        self._target_misses: dict[tuple[str, str], list[str]] = {}

    # -- entry point -----------------------------------------------------------------

    def compile(self) -> dict[str, SyncObject]:
        self.lookups = self._compile_lookups()
        self.transforms = self._compile_transforms()
        objects = {}
        for name, spec in _mapping(self.sync.get("objects")).items():
            if isinstance(spec, dict):
                obj = self._compile_object(name, spec, join_pointer(SYNC, "objects", name))
                if obj is not None:
                    objects[name] = obj
        self._check_dependencies()
        self._report_target_misses()
        for name in self.transforms:
            if name not in self.used_transforms:
                self._problem(
                    join_pointer(SYNC, "transforms", name),
                    f"transform {name} is not used by any object",
                    severity="warning",
                )
        return objects

    def _problem(self, pointer: str, message: str, severity: str = "error") -> None:
        self.problems.append(Problem(pointer, message, severity=severity))

    # -- lookups and transforms ------------------------------------------------------

    def _compile_lookups(self) -> dict[str, LookupTable]:
        tables = {}
        for name, spec in _mapping(self.sync.get("lookups")).items():
            if isinstance(spec, dict):
                tables[name] = LookupTable.from_spec(name, spec)
        return tables

    def _compile_transforms(self) -> dict[str, Transform]:
        specs = {
            n: s for n, s in _mapping(self.sync.get("transforms")).items() if isinstance(s, dict)
        }
        own: dict[str, Transform] = {}
        for name, spec in specs.items():
            transform = self._compile_transform(name, spec)
            if transform is not None:
                own[name] = transform
        return {
            name: self._with_parents(name, transform, specs, own) for name, transform in own.items()
        }

    def _compile_transform(self, name: str, spec: dict[str, Any]) -> Transform | None:
        pointer = join_pointer(SYNC, "transforms", name)
        keep_nulls = spec.get("keepNulls") is True
        if isinstance(spec.get("expression"), str):
            if "extends" in spec:
                self._problem(
                    join_pointer(pointer, "extends"), "only a 'map' transform can extend another"
                )
            expression = self._expression(spec["expression"], join_pointer(pointer, "expression"))
            return (
                Transform(name, expression=expression, keep_nulls=keep_nulls)
                if expression is not None
                else None
            )
        rules = []
        for target, source in _mapping(spec.get("map")).items():
            path = tuple(str(target).split("."))
            if isinstance(source, str):
                expression = self._expression(source, join_pointer(pointer, "map", target))
                if expression is not None:  # a broken field is left out; others still checked
                    rules.append(FieldRule(path, expression, origin=name))
            else:
                rules.append(FieldRule(path, None, source, origin=name))
        return Transform(name, fields=tuple(rules), keep_nulls=keep_nulls)

    def _with_parents(
        self, name: str, transform: Transform, specs: dict[str, Any], own: dict[str, Transform]
    ) -> Transform:
        """``transform`` with the fields of the transforms it ``extends`` (its own win)."""
        chain: list[str] = [name]
        fields = list(transform.fields)
        parent = specs[name].get("extends")
        while isinstance(parent, str):
            pointer = join_pointer(SYNC, "transforms", chain[-1], "extends")
            if parent in chain:
                self._problem(
                    pointer, "transform inheritance cycle: " + " → ".join([*chain, parent])
                )
                break
            if parent not in specs:
                self._problem(pointer, f"{chain[-1]} extends unknown transform {parent!r}")
                break
            self.used_transforms.add(parent)
            base = own.get(parent)
            if base is None or base.expression is not None:
                if base is not None:
                    self._problem(
                        pointer,
                        f"{parent} is an 'expression' transform; only "
                        "'map' transforms can be extended",
                    )
                break
            taken = {rule.target for rule in fields}
            fields = [rule for rule in base.fields if rule.target not in taken] + fields
            chain.append(parent)
            parent = specs[parent].get("extends")
        if len(chain) == 1:
            return transform
        return dataclasses.replace(transform, fields=tuple(fields))

    def _expression(self, source: str, pointer: str) -> Expression | None:
        try:
            expression = compile_expression(source)
        except ExpressionSyntaxError as exc:
            self._problem(pointer, str(exc))
            return None
        self._check_calls(expression, pointer)
        return expression

    def _check_calls(self, expression: Expression, pointer: str) -> None:
        bound = bound_names(expression)
        variables = self._variable_names()
        for name, args, position in function_calls(expression):
            where = f" (at character {position})" if position is not None else ""
            if name not in HELPERS and name not in self._builtins and name not in bound:
                known = sorted(set(HELPERS) | set(self._builtins))
                hint = difflib.get_close_matches(name, known, n=1)
                suggestion = f"; did you mean ${hint[0]}?" if hint else ""
                self._problem(pointer, f"unknown function ${name}{where}{suggestion}")
                continue
            first = args[0] if args else UNDEFINED
            if not isinstance(first, str):
                continue
            if name in TABLE_HELPERS and first not in self.lookups:
                self._problem(
                    pointer,
                    f"${name} uses lookup table {first!r}, which is not "
                    f"defined in x-synchronization.lookups{where}",
                )
            elif name in ENTITY_HELPERS and first not in ENTITIES:
                self._problem(
                    pointer, f"${name}: {first!r} is not an entity ({', '.join(ENTITIES)}){where}"
                )
            elif name == "var" and first not in variables:
                self._problem(
                    pointer,
                    f"$var({first!r}): no server variable or declared "
                    f"variable has that name{where}",
                )

    def _variable_names(self) -> set[str]:
        names = set(_mapping(self.sync.get("variables")))
        for server in self.document.get("servers") or []:
            if isinstance(server, dict):
                names.update(_mapping(server.get("variables")))
        return names

    def _template(self, value: Any, pointer: str, kind: str) -> Template | None:
        try:
            template = compile_template(value)
        except TemplateSyntaxError as exc:
            self._problem(pointer, f"template {value!r}: {exc}")
            return None
        roots = TEMPLATE_ROOTS.get(kind, ())
        for expression in template.expressions():
            self._check_calls(expression, pointer)
            head = expression.source.strip().split(".")[0].split("[")[0]
            if head.isidentifier() and head not in roots:
                options = ", ".join(roots) or "nothing"
                self._problem(
                    pointer,
                    f"template {value!r}: {{{head}}} is not available here "
                    f"(a {kind} template can use {options})",
                )
        return template

    # -- objects ---------------------------------------------------------------------

    def _compile_object(self, name: str, spec: dict[str, Any], pointer: str) -> SyncObject | None:
        entity = spec.get("entity")  # an unknown entity is reported by the meta-schema;
        # the object is still checked so that every other problem shows too.
        push: dict[str, CallSpec] = {}
        push_spec = _mapping(spec.get("push"))
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
        pull_spec = _mapping(spec.get("pull"))
        pull_list = pull_read = pull_body = pull_deleted = None
        if pull_spec:
            pull_pointer = join_pointer(pointer, "pull")
            if isinstance(pull_spec.get("list"), dict):
                pull_list = self._call(
                    "list",
                    pull_spec["list"],
                    join_pointer(pull_pointer, "list"),
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
            if isinstance(pull_spec.get("deleted"), str):
                pull_deleted = self._expression(
                    pull_spec["deleted"], join_pointer(pull_pointer, "deleted")
                )
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
        )

    def _call(
        self, kind: str, spec: dict[str, Any], pointer: str, body_target: str | None
    ) -> CallSpec | None:
        reference = spec.get("operation")
        if not isinstance(reference, str):
            return None  # reported by the meta-schema
        operation = find_operation(self.operations, reference)
        if operation is None:
            self._unknown_operation(reference, join_pointer(pointer, "operation"))
            return None
        params = self._params(kind, operation, _mapping(spec.get("params")), pointer)
        headers = {}
        for header, value in _mapping(spec.get("headers")).items():
            template = self._template(value, join_pointer(pointer, "headers", header), kind)
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
        elif (
            kind in ("create", "update")
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
        if kind == "list":
            self._check_list_params(operation, spec, pointer)
        when = None
        if isinstance(spec.get("when"), str):
            when = self._expression(spec["when"], join_pointer(pointer, "when"))
        options = {
            k: v
            for k, v in spec.items()
            if k not in ("operation", "params", "headers", "body", "before", "description", "when")
        }
        return CallSpec(kind, pointer, operation, params, headers, body, options, before, when)

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
        self, kind: str, operation: Operation, given: dict[str, Any], pointer: str
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
            template = self._template(value, where, kind)
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
            ):
                self._problem(
                    join_pointer(pointer, "params"),
                    f"required {param['in']} parameter {param['name']!r} of "
                    f"{operation.key} is never provided",
                )
        return params

    def _filled_by_list(self, kind: str, name: Any, pointer: str) -> bool:
        return kind == "list" and name in self._list_param_names(pointer)

    def _list_param_names(self, pointer: str) -> set[str]:
        from shared.connector.source import resolve_pointer

        try:
            spec = resolve_pointer(self.document, pointer)
        except (KeyError, ValueError):
            return set()
        names = set()
        pagination = _mapping(spec.get("pagination"))
        incremental = _mapping(spec.get("incremental"))
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
        pagination = _mapping(spec.get("pagination"))
        incremental = _mapping(spec.get("incremental"))
        needs_body = "body" in (pagination.get("in"), incremental.get("in"))
        if needs_body and "body" not in spec:
            self._problem(
                pointer,
                "pagination or incremental 'in: body' needs a list 'body' "
                "transform (its input has since, cursor, pageSize)",
            )

    def _body(
        self, name: Any, pointer: str, schema: Any, document: dict[str, Any] | None, what: str
    ) -> Transform | None:
        if not isinstance(name, str):
            return None
        self.used_transforms.add(name)
        transform = self.transforms.get(name)
        if transform is None:
            if name not in _mapping(self.sync.get("transforms")):
                hint = difflib.get_close_matches(
                    name, list(_mapping(self.sync.get("transforms"))), n=1
                )
                suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
                self._problem(pointer, f"unknown transform {name!r}{suggestion}")
            return None
        if schema is not None:
            for rule in transform.fields:
                if not schema_has_path(document, schema, rule.target):
                    misses = self._target_misses.setdefault((rule.origin or name, rule.name), [])
                    if what not in misses:
                        misses.append(what)
        return transform

    def _report_target_misses(self) -> None:
        for (transform, field), targets in self._target_misses.items():
            self._problem(
                join_pointer(SYNC, "transforms", transform, "map", field),
                f"target field {field!r} is not in {' nor in '.join(targets)}",
            )

    def _check_dependencies(self) -> None:
        graph = {
            k: [e for e in v if isinstance(e, str)]
            for k, v in _mapping(self.sync.get("dependencies")).items()
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


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
