"""What an expression can see besides its input: lookups, links, variables.

Expressions are compiled once per document, but lookups (overridable per
instance), links (per instance) and variables (per instance) change from one
evaluation to the next. The helper functions read them from the
``TransformContext`` made current for the evaluation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any, Protocol

_MISSING = object()


class LinkLookup(Protocol):
    """Reads the link table of one instance (PostgreSQL in the services).

    Both methods return ``None`` when the record has no link.
    """

    def external_id(self, entity: str, bss_id: str) -> str | None: ...

    def bss_id(self, entity: str, external_id: str) -> str | None: ...


class LinksNotLoaded(Exception):
    """Raised by a ``PreloadedLinks`` asked for a key it was not given.

    The caller loads ``wanted`` from the database (asynchronously) and evaluates again.
    """

    def __init__(self, wanted: list[tuple[str, str, str]]) -> None:
        super().__init__(f"links not loaded: {wanted}")
        self.wanted = wanted  # (kind 'external'|'bss', entity, id)


@dataclasses.dataclass
class PreloadedLinks:
    """A ``LinkLookup`` over dictionaries loaded beforehand (async code can't block on I/O
    inside an expression). Unknown keys raise ``LinksNotLoaded`` so the caller can load
    them and retry; keys loaded and found absent map to ``None``."""

    external: dict[tuple[str, str], str | None] = dataclasses.field(default_factory=dict)
    bss: dict[tuple[str, str], str | None] = dataclasses.field(default_factory=dict)

    def external_id(self, entity: str, bss_id: str) -> str | None:
        try:
            return self.external[(entity, bss_id)]
        except KeyError:
            raise LinksNotLoaded([("external", entity, bss_id)]) from None

    def bss_id(self, entity: str, external_id: str) -> str | None:
        try:
            return self.bss[(entity, external_id)]
        except KeyError:
            raise LinksNotLoaded([("bss", entity, external_id)]) from None


@dataclasses.dataclass(frozen=True)
class LookupTable:
    """A value-mapping table; ``default`` applies to values it does not list."""

    name: str
    values: Mapping[str, Any]
    default: Any = _MISSING

    @property
    def has_default(self) -> bool:
        return self.default is not _MISSING

    def reverse(self) -> dict[Any, str]:
        """Mapped value → first key mapping to it (for pull)."""
        out: dict[Any, str] = {}
        for key, value in self.values.items():
            out.setdefault(value_key(value), key)
        return out

    def overlaid(self, overrides: Mapping[str, Any]) -> LookupTable:
        """This table with an instance's entries replacing or adding to the connector's."""
        return dataclasses.replace(self, values={**self.values, **overrides})

    @classmethod
    def from_spec(cls, name: str, spec: Mapping[str, Any]) -> LookupTable:
        """From the connector's ``lookups`` entry: a plain mapping or ``{values, default}``."""
        if "values" in spec and isinstance(spec["values"], Mapping):
            return cls(name, dict(spec["values"]), spec.get("default", _MISSING))
        return cls(name, dict(spec))


def value_key(value: Any) -> Any:
    """A hashable key for a JSON value that keeps ``true`` apart from ``1`` and treats
    ``1`` and ``1.0`` alike (reverse lookups compare mapped values)."""
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    if isinstance(value, int | float):
        return ("number", float(value))
    if isinstance(value, str):
        return ("string", value)
    return ("json", json.dumps(value, sort_keys=True, default=str))


@dataclasses.dataclass
class TransformContext:
    """Everything an evaluation may consult besides its input."""

    lookups: Mapping[str, LookupTable] = dataclasses.field(default_factory=dict)
    links: LinkLookup | None = None
    variables: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    _reversed: dict[str, dict[Any, str]] = dataclasses.field(default_factory=dict, repr=False)

    def reverse_table(self, name: str) -> dict[Any, str]:
        if name not in self._reversed:
            self._reversed[name] = self.lookups[name].reverse()
        return self._reversed[name]


EMPTY_CONTEXT = TransformContext()
_current: ContextVar[TransformContext] = ContextVar("transform_context", default=EMPTY_CONTEXT)


def current_context() -> TransformContext:
    return _current.get()


@contextlib.contextmanager
def using_context(context: TransformContext) -> Iterator[TransformContext]:
    """Make ``context`` the one helper functions see, for the duration of the block."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)
