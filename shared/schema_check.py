"""A hand-written check of a JSON Schema, pinned to the rules it mirrors.

Every delivery carries a document a schema governs — the sync envelope
(``sync-message.schema.json``), the BSS event (``bss-event.schema.json``) — and a
compiled jsonschema validator costs about 100 µs a document, more than the rest
of the consumer's work. Each of those schemas has a hand-written ``conforms``
function, ~20 times cheaper, that is never more lenient than the schema (property
tests hold it to that). A :class:`PinnedSchemaCheck` runs it first; jsonschema
judges only what it refuses, and words the reason.

The fast check runs only while

* ``SCHEMA_CHECKS`` is ``fast`` (the default; ``jsonschema``: jsonschema alone), and
* the schema's rules hash to the value the check was reviewed against
  (:func:`rules_sha256`): the schema with its annotations left out (``title``,
  ``description``, ``$comment``, ``examples``…) and every document its ``$ref`` s
  reach put in. Rewording a description keeps the fast path; changing a rule turns
  it off — jsonschema alone, one warning in the log — and fails the check's unit
  test until a person has reviewed ``conforms`` and updated the pin.

Both are decided once per process, at the first document checked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urldefrag, urljoin

import structlog
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry

from shared.errors import InvalidMessage
from shared.schemas import load_schema, registry, schema_uri
from shared.settings import get_setting

log = structlog.get_logger(__name__)

#: Keywords that annotate and never decide validity (draft 2020-12, §9 of the
#: validation vocabulary, and ``$comment``). ``format`` is kept: it asserts here.
ANNOTATIONS = frozenset({"title", "description", "$comment", "examples", "default",
                         "deprecated", "readOnly", "writeOnly"})
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions",
                          "dependentSchemas"})
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SCHEMA_VALUES = frozenset({"items", "additionalItems", "additionalProperties", "not", "if",
                            "then", "else", "contains", "propertyNames", "unevaluatedItems",
                            "unevaluatedProperties", "contentSchema"})
MAX_REASON_CHARS = 500


def rules_of(schema: Any) -> Any:
    """``schema`` without its annotation keywords, at every level where a value is a
    schema (a property *named* ``description`` stays; ``enum`` and ``const`` values are
    kept whole). Unknown keywords are kept: what is not known to annotate counts."""
    if not isinstance(schema, dict):
        return schema  # true / false
    rules: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ANNOTATIONS:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            rules[key] = {name: rules_of(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            rules[key] = [rules_of(sub) for sub in value]
        elif key in _SCHEMA_VALUES:
            rules[key] = ([rules_of(sub) for sub in value] if isinstance(value, list)
                          else rules_of(value))
        else:
            rules[key] = value
    return rules


def rules_digest(schema: dict[str, Any], uri: str, known: Registry) -> str:
    """sha256 of the rules of ``schema`` (registered as ``uri``) and of every schema its
    ``$ref`` s reach in ``known``, in canonical JSON. Raises
    ``referencing.exceptions.Unresolvable`` for a ``$ref`` that ``known`` lacks."""
    rules = rules_of(schema)
    reached: dict[str, Any] = {uri: rules}
    _follow_refs(rules, uri, known, reached)
    canonical = json.dumps(reached, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


_DATA = frozenset({"enum", "const"})  # values, not schemas: a "$ref" key in them is data


def _follow_refs(rules: Any, base: str, known: Registry, reached: dict[str, Any]) -> None:
    """Add to ``reached`` the rules of what each ``$ref`` in ``rules`` points to, by
    absolute URI, and of what theirs point to."""
    if isinstance(rules, list):
        for item in rules:
            _follow_refs(item, base, known, reached)
        return
    if not isinstance(rules, dict):
        return
    for key, value in rules.items():
        if key == "$ref" and isinstance(value, str):
            target = urljoin(base, value)
            if target not in reached:
                reached[target] = target_rules = rules_of(
                    known.resolver(base_uri=base).lookup(value).contents)
                _follow_refs(target_rules, urldefrag(target).url, known, reached)
        elif key not in _DATA:
            _follow_refs(value, base, known, reached)


def rules_sha256(name: str) -> str:
    """:func:`rules_digest` of the schema ``name`` under ``schemas/`` (``"bss-event"``)."""
    return rules_digest(load_schema(name), schema_uri(name), registry())


class PinnedSchemaCheck:
    """The schema ``name``'s check: ``fast`` first while it is pinned and allowed (see
    the module docstring), jsonschema for the rest. ``formats``: assert ``format``
    (``uuid``, ``date-time``…) as the schema's contract says, or leave it an
    annotation. ``fast_enabled`` overrides ``SCHEMA_CHECKS`` (benchmarks, tests)."""

    def __init__(self, name: str, fast: Callable[[Any], bool], pinned_sha256: str, *,
                 subject: str, formats: bool, fast_enabled: bool | None = None) -> None:
        self.name = name
        self.fast = fast
        self.pinned_sha256 = pinned_sha256
        self.subject = subject
        self.formats = formats
        self._fast_enabled = fast_enabled
        self._validator: Draft202012Validator | None = None

    @property
    def file(self) -> str:
        return schema_uri(self.name).rsplit("/", 1)[-1]

    @property
    def validator(self) -> Draft202012Validator:
        """The compiled jsonschema validator (references resolved offline)."""
        if self._validator is None:
            self._validator = Draft202012Validator(
                load_schema(self.name), registry=registry(),
                format_checker=Draft202012Validator.FORMAT_CHECKER if self.formats else None)
        return self._validator

    @property
    def fast_enabled(self) -> bool:
        """Whether ``fast`` runs: decided at the first call, for the process's life."""
        if self._fast_enabled is None:
            self._fast_enabled = self._decide()
        return self._fast_enabled

    def _decide(self) -> bool:
        if get_setting("schema_checks") != "fast":
            return False
        actual = rules_sha256(self.name)
        if actual != self.pinned_sha256:
            log.warning("schema_check.fast_path_off", schema=self.file,
                        reason="the schema's rules changed since its fast check was "
                               "reviewed; jsonschema checks alone",
                        rules_sha256=actual, reviewed_sha256=self.pinned_sha256)
            return False
        return True

    def check(self, document: Any) -> None:
        """Raise :class:`InvalidMessage` — the location and jsonschema's reason —
        unless ``document`` satisfies the schema."""
        enabled = self._fast_enabled  # the per-message path: no property, no settings
        if enabled is None:
            enabled = self.fast_enabled
        if enabled and self.fast(document):
            return
        error = best_match(self.validator.iter_errors(document))
        if error is None:
            return
        where = "/" + "/".join(str(p) for p in error.absolute_path)
        reason = error.message
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[:MAX_REASON_CHARS - 1] + "…"
        raise InvalidMessage(f"{self.subject} breaks {self.file} at {where}: {reason}")
