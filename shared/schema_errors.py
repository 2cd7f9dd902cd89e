"""JSON Schema validation errors as located, plain sentences: the project's one translator.

jsonschema's own messages are written for programmers ("is not valid under any
of the given schemas", "Additional properties are not allowed ('bdy' was
unexpected)"); a person wants ``/objects/Contact/push/create/bdy: unknown key
'bdy' (did you mean 'body'?); allowed: body, operation, params``. Used for a
connector's ``x-synchronization`` block (against ``schemas/connector.schema.json``),
the installation file (``schemas/installation.schema.json``) and, for the
sentences, the sandbox's record problems.

Every finding is a :class:`LocatedSentence`: a JSON pointer and one sentence. An
unknown key or a missing required property is one finding each, a key that
breaks ``propertyNames`` is located at the key itself, and a ``oneOf``/``anyOf``
that no branch matches is explained by its most relevant branch. A document type
with words of its own (the installation file names credentials and entities)
passes a :data:`Wording` that is asked first. Only ``enum`` findings quote the
value that was given (it is compared with a closed list, to suggest the nearest);
no sentence quotes a value that broke a ``pattern``, so a secret written where a
reference belongs is never echoed.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from jsonschema import ValidationError
from jsonschema.exceptions import best_match

from shared.json_pointer import join_pointer


class LocatedSentence(NamedTuple):
    """One finding: where (a JSON pointer) and one plain sentence saying what is wrong."""

    pointer: str
    sentence: str


Wording = Callable[[ValidationError, str], str | None]
"""A document type's own sentence for an error at a pointer, or ``None`` for the general one."""


def located_sentences(
    errors: Iterable[ValidationError],
    *,
    base_pointer: str = "",
    root: Mapping[str, Any] | None = None,
    wording: Wording | None = None,
) -> list[LocatedSentence]:
    """Every finding of ``errors``, each once, in document order.

    ``base_pointer`` prefixes every pointer (the validated value's place in a larger
    document); ``root`` is the validating schema, to name the keys a local ``$ref``
    allows; ``wording`` is asked first for every error.
    """
    found: list[LocatedSentence] = []
    for error in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        found += _located(error, base_pointer, root or {}, wording)
    return list(dict.fromkeys(found))


def _located(error: ValidationError, base: str, root: Mapping[str, Any],
             wording: Wording | None) -> list[LocatedSentence]:
    pointer = join_pointer(base, *error.absolute_path)
    names_a_key = "propertyNames" in error.relative_schema_path
    if names_a_key:
        pointer = join_pointer(pointer, str(error.instance))
    own = wording(error, pointer) if wording is not None else None
    if own is not None:
        return [LocatedSentence(pointer, own)]
    if names_a_key:
        return [LocatedSentence(pointer, _key_sentence(error))]
    kind, instance = error.validator, error.instance
    if kind in ("oneOf", "anyOf") and error.context:
        branch = _relevant_branch(error)
        if branch is not None:
            return _located(branch, base, root, wording)
    if kind == "required" and isinstance(instance, dict):
        missing = [name for name in error.validator_value if name not in instance]
        return [LocatedSentence(pointer, f"the required property {name!r} is missing")
                for name in missing]
    if kind in ("additionalProperties", "unevaluatedProperties") and isinstance(instance, dict):
        allowed = _allowed_keys(error, root)
        return [LocatedSentence(join_pointer(pointer, key), _unknown_key(key, allowed))
                for key in _extra_keys(error, instance, allowed)]
    return [LocatedSentence(pointer, sentence_for(error, root))]


def _relevant_branch(error: ValidationError) -> ValidationError | None:
    """The branch error that explains a failed ``oneOf``/``anyOf`` best.

    A ``const`` mismatch only says "this is another branch", so it is left out.
    """
    relevant = [e for e in error.context or () if e.validator != "const"]
    branch = best_match(relevant or error.context or ())
    return branch if branch is not error else None


def explaining_branch(error: ValidationError) -> ValidationError | None:
    """The branch error that explains why a value failed an ``anyOf``/``oneOf`` of
    alternatives — a nullable field's (``anyOf: [X, {type: null}]``, 3.0's
    ``{nullable: true, enum: [null]}``) included: a branch that admits only null says
    nothing about a value that is not null, and a branch of the value's own type says
    more than one of another type. ``None`` when the error has no branches."""
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context or ():
        index = sub.relative_schema_path[0] if sub.relative_schema_path else None
        branches.setdefault(index, []).append(sub)
    if not branches:
        return None
    kept = [errs for errs in branches.values() if not _only_null(errs, error.instance)]
    kept = kept or list(branches.values())
    typed = [errs for errs in kept
             if not any(e.validator == "type" and not e.relative_path for e in errs)]
    return best_match(e for errs in (typed or kept) for e in errs)


def _only_null(errors: list[ValidationError], instance: Any) -> bool:
    """Whether a branch's complaints about ``instance`` only say that it is not null."""
    return instance is not None and all(
        not e.relative_path and (
            (e.validator == "type" and e.validator_value in ("null", ["null"]))
            or (e.validator == "enum" and list(e.validator_value or ()) == [None])
            or (e.validator == "const" and e.validator_value is None))
        for e in errors)


def sentence_for(error: ValidationError, root: Mapping[str, Any] | None = None) -> str:
    """One plain sentence for ``error`` at its own place (what ``_located`` does not split)."""
    kind, expected, instance = error.validator, error.validator_value, error.instance
    if kind == "required":
        missing = [n for n in expected if not isinstance(instance, dict) or n not in instance]
        names = ", ".join(map(repr, missing))
        return (f"the required propert{'y' if len(missing) == 1 else 'ies'} {names} "
                f"{'is' if len(missing) == 1 else 'are'} missing")
    if kind in ("additionalProperties", "unevaluatedProperties") and isinstance(instance, dict):
        allowed = _allowed_keys(error, root or {})
        return "; ".join(_unknown_key(k, allowed) for k in _extra_keys(error, instance, allowed))
    if kind == "enum":
        hint = difflib.get_close_matches(str(instance), [str(v) for v in expected], n=1)
        suffix = f" — did you mean {hint[0]!r}?" if hint else ""
        return f"{instance!r} is not one of: {', '.join(map(str, expected))}{suffix}"
    if kind == "type":
        names = expected if isinstance(expected, list) else [expected]
        return f"must be {' or '.join(_a(n) for n in names)}, not {_a(_json_type(instance))}"
    if kind in _BOUNDS:
        if kind in ("minLength", "minItems", "minProperties") and expected == 1:
            return "must not be empty"
        return _BOUNDS[kind].format(expected)
    return _rule_sentence(error)


def _rule_sentence(error: ValidationError) -> str:
    kind, expected = error.validator, error.validator_value
    if kind == "const":
        return f"must be {expected!r}"
    if kind == "pattern":
        return f"does not have the expected form (pattern {expected})"
    if kind == "format":
        return f"is not a valid {expected}"
    if kind == "uniqueItems":
        return "lists the same value more than once"
    if kind == "dependentRequired":
        return error.message.replace("is a dependency of", "is needed with")
    if kind == "anyOf" and isinstance(expected, list) and expected and all(
            isinstance(v, dict) and list(v) == ["required"] for v in expected):
        return f"needs {' or '.join(repr(v['required'][0]) for v in expected)}"
    if kind in ("oneOf", "anyOf"):
        return "does not match any of the allowed shapes"
    if kind == "not":
        return "is not allowed here"
    return f"breaks the schema's {kind!r} rule"


_BOUNDS = {
    "minimum": "must be at least {}",
    "maximum": "must be at most {}",
    "exclusiveMinimum": "must be more than {}",
    "exclusiveMaximum": "must be less than {}",
    "minLength": "must be at least {} characters long",
    "maxLength": "must be at most {} characters long",
    "minItems": "must have at least {} items",
    "maxItems": "must have at most {} items",
    "minProperties": "must have at least {} keys",
    "maxProperties": "must have at most {} keys",
}


def _key_sentence(error: ValidationError) -> str:
    """A key that breaks ``propertyNames`` (the error's instance is the key)."""
    key = str(error.instance)
    if error.validator == "enum":
        return _unknown_key(key, [str(v) for v in error.validator_value])
    if error.validator == "pattern":
        return f"the key {key!r} does not have the expected form (pattern {error.validator_value})"
    return f"the key {key!r} is not allowed here"


def _unknown_key(key: str, allowed: list[str]) -> str:
    hint = difflib.get_close_matches(key, allowed, n=1)
    return (f"unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + (f"; allowed: {', '.join(allowed)}" if allowed else ""))


def _extra_keys(error: ValidationError, instance: dict[str, Any], allowed: list[str]) -> list[str]:
    patterns = error.schema.get("patternProperties") or {}
    if allowed:
        return [k for k in instance
                if k not in allowed and not any(re.search(p, k) for p in patterns)]
    # no list to compare with: jsonschema's message names them ("('x' was unexpected)")
    return [k for k in instance if repr(k) in error.message] or list(instance)


def _allowed_keys(error: ValidationError, root: Mapping[str, Any]) -> list[str]:
    """The keys the failing schema names, through its ``allOf`` and local ``$ref`` s."""
    schema = error.schema
    names: set[str] = set(schema.get("properties") or {})
    for sub in schema.get("allOf") or []:
        if isinstance(sub, dict):
            names.update(sub.get("properties") or {})
            ref = sub.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                target = (root.get("$defs") or {}).get(ref.rsplit("/", 1)[1], {})
                names.update(target.get("properties") or {})
    return sorted(names)


_ARTICLES = {"object": "an object", "array": "a list", "integer": "an integer"}


def _a(name: str) -> str:
    return _ARTICLES.get(name, f"a {name}")


def _json_type(value: Any) -> str:
    for name, kind in (("boolean", bool), ("integer", int), ("number", float), ("string", str),
                       ("array", list), ("object", dict)):
        if isinstance(value, kind):
            return name
    return "null"
