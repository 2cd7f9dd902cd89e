"""Compiling a push action made of several requests: ``steps`` (README.md, "Writing a
connector"; docs/decisions.md, "Steps").

A ``create``, ``update`` or ``delete`` may be an ordered list of named calls instead of
one operation: create the customer, then its billing address; read, then write. Each
step is compiled as any call is (operation, params, headers, body checked against the
operation's request schema, errorPointer / errorWhen), and then what only steps have:

* a later step's templates and ``when`` may use an earlier step's captures as
  ``{steps.NAME.CAPTURE}``, its body transform as ``$steps.NAME.CAPTURE``; a reference
  to a step that is not earlier, to an unknown step or to a capture the step does not
  make is a located error;
* a create's steps name the one whose answer holds the created record's id (its
  ``externalId``, exactly one); the steps after it may use ``{externalId}``, the
  steps before it may not (there is none yet);
* a delete has no record: its steps take no body.

Steps take no ``before``: a step that reads is a ``before`` of the steps after it.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import TYPE_CHECKING, Any

from shared.connector.document import CallSpec
from shared.connector.transform_compiler import as_mapping
from shared.json_pointer import join_pointer
from shared.transform import Expression
from shared.transform.expressions import path_names, variable_paths

if TYPE_CHECKING:
    from shared.connector.object_compiler import ObjectCompiler

STEPS = "steps"
#: Methods that change nothing: a create's steps before its id step run again on a
#: retry (nothing is recorded for them), which only these may do harmlessly.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class StepsCompiler:
    """Compiles one action's ``steps`` with the object compiler's help."""

    def __init__(self, objects: ObjectCompiler) -> None:
        self.objects = objects

    def _problem(self, pointer: str, message: str, severity: str = "error") -> None:
        self.objects._problem(pointer, message, severity)

    def compile(self, action: str, spec: dict[str, Any], pointer: str) -> CallSpec | None:
        """The action ``action`` (create, update, delete) declared at ``pointer`` with
        ``spec["steps"]``; ``None`` when a step does not compile (its problems are
        recorded, and every step is still checked)."""
        at = join_pointer(pointer, STEPS)
        specs = [(join_pointer(at, index), step if isinstance(step, dict) else {})
                 for index, step in enumerate(spec[STEPS])]
        names = self._names(specs)
        id_index = self._id_step(action, specs, at)
        steps: list[CallSpec | None] = []
        for index, (where, step) in enumerate(specs):
            roots = _roots(action, after_id=id_index is not None and index > id_index)
            call = self.objects._call(f"{action} step", step, where, body_target="request",
                                      roots=roots)
            if call is not None:
                self._check_when(call, roots)
                self._check_references(call, step, index, names, specs)
                self._check_kind(action, call, step, where, index, id_index)
            steps.append(call)
        compiled = tuple(s for s in steps if s is not None)
        if len(compiled) < len(steps) or not compiled:
            return None
        action_call = CallSpec(action, pointer, compiled[0].operation, {}, {}, None, {},
                               steps=compiled)
        main = action_call.main_step
        assert main is not None
        return dataclasses.replace(action_call, operation=main.operation)

    def _names(self, specs: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """Every step's name, in order (``""`` where missing); a repeated name is an error."""
        names: list[str] = []
        for where, step in specs:
            name = step.get("name")
            name = name if isinstance(name, str) else ""
            if name and name in names:
                self._problem(join_pointer(where, "name"),
                              f"step name {name!r} is used twice: each step needs its own")
            names.append(name)
        return names

    def _id_step(self, action: str, specs: list[tuple[str, dict[str, Any]]],
                 at: str) -> int | None:
        """The index of a create's id step (the one with ``externalId``); a create with
        none or several, and an update or delete with one, are errors."""
        marked = [index for index, (_, step) in enumerate(specs) if "externalId" in step]
        if action != "create":
            for index in marked:
                self._problem(join_pointer(specs[index][0], "externalId"),
                              f"only a create's step answers the record's id: the {action} "
                              "already has it as {externalId}")
            return None
        if not marked:
            self._problem(at, "a create's steps must say which answer holds the created "
                              "record's id: give exactly one step 'externalId' (a JSON "
                              "pointer into its answer, such as /id)")
            return None
        for index in marked[1:]:
            self._problem(join_pointer(specs[index][0], "externalId"),
                          f"step {index} says externalId too: exactly one step of a create "
                          f"answers the record's id (step {marked[0]} does)")
        return marked[0]

    def _check_kind(self, action: str, call: CallSpec, spec: dict[str, Any], where: str,
                    index: int, id_index: int | None) -> None:
        if action == "delete" and "body" in spec:
            self._problem(join_pointer(where, "body"),
                          "a delete has no record to make a body from: its steps take none")
        if index == id_index and "when" in spec:
            self._problem(join_pointer(where, "when"),
                          "the step that answers the record's id is always sent: it takes "
                          "no when")
        if (action == "create" and id_index is not None and index < id_index
                and call.operation.method.upper() not in SAFE_METHODS):
            self._problem(where, f"step {call.name!r} ({call.operation.key}) comes before the "
                                 "step that answers the record's id: nothing is recorded of "
                                 "it, so a retry sends it again; make it a read, or put it "
                                 "after the id step", severity="warning")

    def _check_when(self, call: CallSpec, roots: tuple[str, ...]) -> None:
        """A step's ``when`` reads what its templates read (``roots``), no more."""
        if call.when is None:
            return
        head = call.when.source.strip().split(".")[0].split("[")[0]
        if head.isidentifier() and head not in roots:
            self._problem(join_pointer(call.pointer, "when"),
                          f"when {call.when.source!r}: {head!r} is not available here (a "
                          f"step's when can use {', '.join(roots)})")

    def _check_references(self, call: CallSpec, spec: dict[str, Any], index: int,
                          names: list[str], specs: list[tuple[str, dict[str, Any]]]) -> None:
        """Each ``{steps.NAME.CAPTURE}`` of the step's templates and ``when`` names an
        earlier step and one of its captures."""
        for where, expression in _expressions(call):
            for path in path_names(expression):
                if path[0] != STEPS or len(path) < 2:
                    continue
                message = _reference_problem(path, index, names, specs)
                if message is not None:
                    self._problem(where, message)
        if call.body is None or not call.body.answers:
            return
        for expression in call.body.expressions():  # $steps.NAME.CAPTURE in its body
            for names_after in variable_paths(expression, STEPS):
                if not names_after:
                    continue
                message = _reference_problem((STEPS, *names_after), index, names, specs,
                                             written="$")
                if message is not None:
                    self._problem(join_pointer(call.pointer, "body"),
                                  f"transform {call.body.name}: {message}")


def _roots(action: str, *, after_id: bool) -> tuple[str, ...]:
    """What a step's templates may start with: the record, the steps before it, and the
    external id — on a create only once its id step has answered."""
    if action == "create" and not after_id:
        return ("record", STEPS)
    return ("record", "externalId", STEPS)


def _expressions(call: CallSpec) -> list[tuple[str, Expression]]:
    """``(pointer, expression)`` of every template and ``when`` of a step."""
    found: list[tuple[str, Expression]] = []
    for group, templates in (("params", call.params), ("headers", call.headers)):
        for name, template in templates.items():
            found += [(join_pointer(call.pointer, group, name), expression)
                      for expression in template.expressions()]
    if call.when is not None:
        found.append((join_pointer(call.pointer, "when"), call.when))
    return found


def _reference_problem(path: tuple[str, ...], index: int, names: list[str],
                       specs: list[tuple[str, dict[str, Any]]], *,
                       written: str = "{}") -> str | None:
    """What is wrong with ``steps.NAME[.CAPTURE]`` used by step ``index``; ``None``: nothing.
    ``written``: as a template writes it (``{steps.a.b}``) or a body (``$``: ``$steps.a.b``)."""
    name = path[1]
    reference = ".".join(path[:3])
    placeholder = "$" + reference if written == "$" else "{" + reference + "}"
    earlier = [n for n in names[:index] if n]
    if name not in names:
        hint = difflib.get_close_matches(name, earlier, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        return (f"{placeholder}: there is no step {name!r}{suggestion}; the steps before "
                f"this one: {', '.join(earlier) or 'none'}")
    if names.index(name) >= index:
        return (f"{placeholder}: step {name!r} is not before this one — a step sees the "
                f"captures of the steps before it ({', '.join(earlier) or 'none'})")
    if len(path) < 3:
        return None
    captures = as_mapping(specs[names.index(name)][1].get("capture"))
    if path[2] not in captures:
        return (f"{placeholder}: step {name!r} captures no {path[2]!r} (its captures: "
                f"{', '.join(captures) or 'none; add capture'})")
    return None
