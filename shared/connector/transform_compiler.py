"""Compiling the JSONata side of ``x-synchronization``: lookups, transforms, expressions
and templates.

Every expression is compiled and every function call in it checked (a known
helper or built-in, an existing lookup table, an entity name, a declared
variable); a ``map`` transform inherits the fields of the transforms it
``extends``, and its targets (``data[0].name``) are parsed and checked to give each
path one shape across them all. Problems are appended to the list given, never
raised, so one pass reports them all. The objects and calls that use the transforms are compiled by
:mod:`shared.connector.object_compiler`, which builds on this module.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from typing import Any

from jsonschema import ValidationError

from shared.connector.problems import Problem
from shared.json_pointer import join_pointer
from shared.schemas import ENTITIES
from shared.transform import (
    Expression,
    ExpressionSyntaxError,
    LookupTable,
    TargetError,
    Template,
    TemplateSyntaxError,
    Transform,
    compile_expression,
    compile_template,
    parse_target,
    shape_problems,
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


def as_mapping(value: Any) -> dict[str, Any]:
    """``value`` when it is an object, else an empty one: the compilers never trust a shape."""
    return value if isinstance(value, dict) else {}


def malformed_target_wording(error: ValidationError, pointer: str) -> str | None:
    """The meta-schema's finding on a malformed map target (its ``propertyNames``
    pattern), worded as the compiler words it — the same sentence, so that the loader
    reports it once, and says where the target goes wrong rather than quote the pattern;
    ``None`` for any other finding (a :data:`shared.schema_errors.Wording`)."""
    path = list(error.absolute_path)
    if "propertyNames" not in error.relative_schema_path or len(path) != 3 \
            or path[0] != "transforms" or path[2] != "map":
        return None
    try:
        parse_target(str(error.instance))
    except TargetError as exc:
        return _target_sentence(str(error.instance), exc)
    return None  # well formed, but with characters a field name may not have


def _target_sentence(target: str, exc: TargetError) -> str:
    return f"target {target!r}: {exc}"


#: How a kind of call is named in a sentence (its key in the connector).
CALL_NAMES = {"deleted": "deletedList"}


class TransformCompiler:
    """Compiles one bundle's lookups and transforms; compiles expressions and templates
    for the object compiler. Read ``lookups`` and ``transforms`` after :meth:`compile`."""

    def __init__(self, document: dict[str, Any], problems: list[Problem]) -> None:
        self.document = document
        self.sync: dict[str, Any] = as_mapping(document.get("x-synchronization"))
        self.problems = problems
        self.transforms: dict[str, Transform] = {}
        self.lookups: dict[str, LookupTable] = {}
        self._used: set[str] = set()
        self._builtins = builtin_function_names()

    def compile(self) -> None:
        """Compile every lookup table, then every transform (with what it extends)."""
        self.lookups = self._compile_lookups()
        self.transforms = self._compile_transforms()

    def use(self, name: str, pointer: str) -> Transform | None:
        """The transform ``name``, counted as used; ``None`` (and a problem at ``pointer``
        when no transform has that name) when it does not compile."""
        self._used.add(name)
        transform = self.transforms.get(name)
        declared = as_mapping(self.sync.get("transforms"))
        if transform is None and name not in declared:
            hint = difflib.get_close_matches(name, list(declared), n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            self._problem(pointer, f"unknown transform {name!r}{suggestion}")
        return transform

    def report_unused(self) -> None:
        """A warning for every transform no object used (call after the objects)."""
        for name in self.transforms:
            if name not in self._used:
                self._problem(
                    join_pointer(SYNC, "transforms", name),
                    f"transform {name} is not used by any object",
                    severity="warning",
                )

    def _problem(self, pointer: str, message: str, severity: str = "error") -> None:
        self.problems.append(Problem(pointer, message, severity=severity))

    # -- lookups and transforms ------------------------------------------------------

    def _compile_lookups(self) -> dict[str, LookupTable]:
        tables = {}
        for name, spec in as_mapping(self.sync.get("lookups")).items():
            if isinstance(spec, dict):
                tables[name] = LookupTable.from_spec(name, spec)
        return tables

    def _compile_transforms(self) -> dict[str, Transform]:
        specs = {
            n: s for n, s in as_mapping(self.sync.get("transforms")).items() if isinstance(s, dict)
        }
        own: dict[str, Transform] = {}
        for name, spec in specs.items():
            transform = self._compile_transform(name, spec)
            if transform is not None:
                own[name] = transform
        compiled = {
            name: self._with_parents(name, transform, specs, own) for name, transform in own.items()
        }
        self._check_shapes(compiled.values())
        return compiled

    def _compile_transform(self, name: str, spec: dict[str, Any]) -> Transform | None:
        pointer = join_pointer(SYNC, "transforms", name)
        keep_nulls = spec.get("keepNulls") is True
        if isinstance(spec.get("expression"), str):
            if "extends" in spec:
                self._problem(
                    join_pointer(pointer, "extends"), "only a 'map' transform can extend another"
                )
            expression = self.expression(spec["expression"], join_pointer(pointer, "expression"))
            return (
                Transform(name, expression=expression, keep_nulls=keep_nulls)
                if expression is not None
                else None
            )
        rules = []
        for target, source in as_mapping(spec.get("map")).items():
            try:
                path = parse_target(str(target))
            except TargetError as exc:
                self._problem(join_pointer(pointer, "map", target), _target_sentence(target, exc))
                continue
            if isinstance(source, str):
                expression = self.expression(source, join_pointer(pointer, "map", target))
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
            self._used.add(parent)
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

    def _check_shapes(self, transforms: Iterable[Transform]) -> None:
        """A problem at each target whose path another target of the same map (its own
        or inherited) shapes otherwise; a problem an extending transform inherits is
        reported once, where it is written."""
        found: dict[tuple[str, str], None] = {}
        for transform in transforms:
            rules = transform.fields
            for number, sentence in shape_problems([rule.target for rule in rules]):
                rule = rules[number]
                at = join_pointer(SYNC, "transforms", rule.origin or transform.name, "map",
                                  rule.name)
                found.setdefault((at, f"target {rule.name!r}: {sentence}"))
        for at, message in found:
            self._problem(at, message)

    # -- expressions and templates ---------------------------------------------------

    def expression(self, source: str, pointer: str) -> Expression | None:
        """``source`` compiled, its calls checked; ``None`` (and a problem) when it does
        not compile."""
        try:
            expression = compile_expression(source)
        except ExpressionSyntaxError as exc:
            self._problem(pointer, str(exc))
            return None
        self._check_calls(expression, pointer)
        return expression

    def template(self, value: Any, pointer: str, kind: str,
                 roots: tuple[str, ...]) -> Template | None:
        """``value`` compiled as a ``kind`` call's template whose expressions may start with
        ``roots`` only; ``None`` (and a problem) when it does not compile."""
        try:
            template = compile_template(value)
        except TemplateSyntaxError as exc:
            self._problem(pointer, f"template {value!r}: {exc}")
            return None
        for expression in template.expressions():
            self._check_calls(expression, pointer)
            head = expression.source.strip().split(".")[0].split("[")[0]
            if head.isidentifier() and head not in roots:
                options = ", ".join(roots) or "nothing"
                self._problem(
                    pointer,
                    f"template {value!r}: {{{head}}} is not available here "
                    f"(a {CALL_NAMES.get(kind, kind)} template can use {options})",
                )
        return template

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
        names = set(as_mapping(self.sync.get("variables")))
        servers = self.document.get("servers")
        for server in servers if isinstance(servers, list) else []:
            if isinstance(server, dict):
                names.update(as_mapping(server.get("variables")))
        return names
