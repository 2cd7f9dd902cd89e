"""JSON Schema validation errors as located, plain sentences.

jsonschema's own messages are written for programmers ("is not valid under any
of the given schemas"); a connector author wants "unknown key 'bdy' (allowed:
body, operation, params…)". Used for the ``x-synchronization`` meta-schema and
the installation file.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from jsonschema import ValidationError
from jsonschema.exceptions import best_match

from shared.connector.problems import Problem
from shared.connector.source import join_pointer


def schema_problems(
    errors: Iterable[ValidationError], base_pointer: str = "", root: dict[str, Any] | None = None
) -> list[Problem]:
    """One problem per error (deepest, most relevant sub-error for oneOf/anyOf).

    ``root`` is the validating schema, to name the keys allowed through local ``$ref``s.
    """
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    for error in sorted(errors, key=lambda e: list(map(str, e.absolute_path))):
        for leaf in _leaves(error):
            pointer = join_pointer(base_pointer, *[str(p) for p in leaf.absolute_path])
            sentence = sentence_for(leaf, root or {})
            if (pointer, sentence) not in seen:
                seen.add((pointer, sentence))
                problems.append(Problem(pointer, sentence))
    return problems


def _leaves(error: ValidationError) -> list[ValidationError]:
    if error.validator in ("oneOf", "anyOf") and error.context:
        # A 'type'/'const' mismatch in a branch means "wrong branch", not the real problem.
        relevant = [e for e in error.context if e.validator not in ("const",)]
        deepest = best_match(relevant or error.context)
        if deepest is not None and deepest is not error:
            return _leaves(deepest)
    return [error]


def sentence_for(error: ValidationError, root: dict[str, Any]) -> str:
    """A plain sentence for one jsonschema error."""
    validator = error.validator
    value: Any = error.validator_value
    instance = error.instance
    if validator == "required":
        missing = [name for name in value if isinstance(instance, dict) and name not in instance]
        names = ", ".join(repr(m) for m in missing) or repr(value)
        return f"required {'property' if len(missing) == 1 else 'properties'} {names} missing"
    if validator in ("additionalProperties", "unevaluatedProperties") and isinstance(
        instance, dict
    ):
        allowed = _evaluated_names(error, root)
        extra = _extra_keys(error, instance, allowed)
        parts = []
        for key in extra:
            hint = difflib.get_close_matches(key, allowed, n=1)
            parts.append(f"{key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        allowed_text = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return f"unknown key {', '.join(parts)}{allowed_text}"
    if validator == "enum":
        hint = difflib.get_close_matches(str(instance), [str(v) for v in value], n=1)
        suffix = f" — did you mean {hint[0]!r}?" if hint else ""
        return f"{instance!r} is not one of: {', '.join(map(str, value))}{suffix}"
    if validator == "const":
        return f"must be {value!r}"
    if validator == "type":
        expected = " or ".join(value) if isinstance(value, list) else value
        return f"must be of type {expected}, not {_json_type(instance)}"
    if validator == "pattern":
        return f"{instance!r} does not have the expected form (pattern {value})"
    if validator == "propertyNames":
        return f"{error.message}"
    if validator in ("minProperties", "minItems"):
        return "must not be empty" if value == 1 else f"needs at least {value} entries"
    if validator == "minLength":
        return "must not be empty" if value == 1 else f"must be at least {value} characters"
    if validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        return error.message
    if validator == "uniqueItems":
        return "has duplicate items"
    if validator == "dependentRequired":
        return error.message.replace("is a dependency of", "is needed with")
    if validator in ("oneOf", "anyOf"):
        if (
            validator == "anyOf"
            and isinstance(value, list)
            and all(isinstance(v, dict) and list(v) == ["required"] for v in value)
        ):
            options = " or ".join(repr(v["required"][0]) for v in value)
            return f"needs {options}"
        return "does not match any of the allowed shapes"
    if validator == "not":
        return "is not allowed here"
    return error.message


def _extra_keys(error: ValidationError, instance: dict[str, Any], allowed: list[str]) -> list[str]:
    patterns = error.schema.get("patternProperties") or {}
    if allowed:
        return [k for k in instance if k not in allowed and not _matches_any(k, patterns)]
    # jsonschema says "... ('x' was unexpected)"; fall back to its message's list
    return [k for k in instance if repr(k) in error.message] or list(instance)


def _matches_any(key: str, patterns: dict[str, Any]) -> bool:
    import re

    return any(re.search(p, key) for p in patterns)


def _evaluated_names(error: ValidationError, root: dict[str, Any]) -> list[str]:
    names: set[str] = set()
    schema = error.schema
    for sub in schema.get("allOf") or []:
        if isinstance(sub, dict):
            names.update((sub.get("properties") or {}).keys())
            ref = sub.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                target = (root.get("$defs") or {}).get(ref.rsplit("/", 1)[1], {})
                names.update((target.get("properties") or {}).keys())
    names.update((schema.get("properties") or {}).keys())
    return sorted(names)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
