"""The functions bss-sync adds to JSONata (docs/architecture.md §3).

=========================================  =================================================
``$lookup(table, value[, fallback])``       value mapped through a lookup table (instance
                                            entries override the connector's); a value the
                                            table lacks gives ``fallback``, else the table's
                                            default, else a mapping error
``$reverseLookup(table, value[, fallback])`` the key that maps to ``value`` (for pull)
``$externalId(entity, bssId)``              the linked record's id in the third party;
                                            a record not linked yet is a retryable
                                            dependency error; ``null`` in, nothing out
``$bssId(entity, externalId)``              the linked record's id in the BSS
``$var(name)``                              a server variable or instance setting
``$coalesce(a, b, …)``                      the first argument that is not null/empty
``$epochMillis(dateOrDateTime)``            ISO 8601 → milliseconds since the epoch
``$isoDateTime(millisOrIso)``               → ``2024-05-01T12:00:00Z`` (UTC)
``$isoDate(millisOrIso)``                   → ``2024-05-01``
=========================================  =================================================

Note: ``$lookup`` replaces JSONata's built-in ``$lookup(object, key)``; write
``object.key`` or ``$sift`` for that.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from shared.errors import DependencyPending
from shared.transform.context import current_context, value_key
from shared.transform.expressions import UNDEFINED, as_text, from_python


class HelperError(ValueError):
    """A helper function was called with something it cannot handle."""


_NO_FALLBACK = object()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def lookup(table: Any, value: Any, fallback: Any = _NO_FALLBACK) -> Any:
    table, value = from_python(table), from_python(value)
    if value is None:
        return None
    tables = current_context().lookups
    if table not in tables:
        raise HelperError(f"$lookup: there is no lookup table {table!r}")
    entry = tables[table]
    key = _key(value)
    if key in entry.values:
        return entry.values[key]
    if fallback is not _NO_FALLBACK:
        return from_python(fallback)
    if entry.has_default:
        return entry.default
    raise HelperError(
        f"$lookup: {value!r} has no entry in lookup table {table!r} "
        "(add it to the table, or give a fallback)"
    )


def reverse_lookup(table: Any, value: Any, fallback: Any = _NO_FALLBACK) -> Any:
    table, value = from_python(table), from_python(value)
    if value is None:
        return None
    context = current_context()
    if table not in context.lookups:
        raise HelperError(f"$reverseLookup: there is no lookup table {table!r}")
    reverse = context.reverse_table(table)
    key = value_key(value)
    if key in reverse:
        return reverse[key]
    if fallback is not _NO_FALLBACK:
        return from_python(fallback)
    raise HelperError(f"$reverseLookup: no entry of lookup table {table!r} maps to {value!r}")


def _key(value: Any) -> str:
    return as_text(value)


def _linked(helper: str, kind: str, entity: Any, some_id: Any) -> Any:
    """``$externalId`` (kind ``external``) and ``$bssId`` (kind ``bss``)."""
    entity, some_id = from_python(entity), from_python(some_id)
    if some_id is None:
        return None
    links = current_context().links
    if links is None:
        raise HelperError(f"${helper}: no link table is available here")
    lookup = links.external_id if kind == "external" else links.bss_id
    found = lookup(str(entity), _key(some_id))
    if found is None:
        where = ("is not linked to this instance yet" if kind == "external"
                 else "is not linked to a BSS record yet")
        prefix = "" if kind == "external" else "external "
        raise DependencyPending(f"{prefix}{entity} {some_id} {where}", entity=str(entity),
                                record_id=_key(some_id))
    return found


def external_id(entity: Any, bss_id: Any) -> Any:
    return _linked("externalId", "external", entity, bss_id)


def bss_id(entity: Any, ext_id: Any) -> Any:
    return _linked("bssId", "bss", entity, ext_id)


def var(name: Any) -> Any:
    name = from_python(name)
    variables = current_context().variables
    if name not in variables:
        raise HelperError(f"$var: there is no variable {name!r}")
    return variables[name]


def coalesce(*values: Any) -> Any:
    for value in values:
        value = from_python(value)
        if value is not None and value != "" and value is not UNDEFINED:
            return value
    return None


def _parse_instant(value: Any) -> datetime:
    if isinstance(value, bool):
        raise HelperError(f"not a date or time: {value!r}")
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit() and len(text) >= 11:  # epoch milliseconds (HubSpot sends them)
            return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
        try:
            if len(text) == 10:
                parsed = datetime.combine(date.fromisoformat(text), datetime.min.time())
            else:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise HelperError(f"not an ISO 8601 date or time: {value!r}") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise HelperError(f"not a date or time: {value!r}")


def epoch_millis(value: Any) -> Any:
    value = from_python(value)
    if value is None:
        return None
    # integer arithmetic: timestamp() * 1000 is a float and loses a millisecond now and then
    return (_parse_instant(value) - _EPOCH) // timedelta(milliseconds=1)


def iso_date_time(value: Any) -> Any:
    value = from_python(value)
    if value is None:
        return None
    instant = _parse_instant(value).astimezone(UTC)
    text = instant.isoformat(timespec="milliseconds" if instant.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def iso_date(value: Any) -> Any:
    value = from_python(value)
    if value is None:
        return None
    return _parse_instant(value).date().isoformat()


HELPERS: dict[str, Any] = {
    "lookup": lookup,
    "reverseLookup": reverse_lookup,
    "externalId": external_id,
    "bssId": bss_id,
    "var": var,
    "coalesce": coalesce,
    "epochMillis": epoch_millis,
    "isoDateTime": iso_date_time,
    "isoDate": iso_date,
}

#: Helpers whose first argument names a lookup table / an entity (checked statically).
TABLE_HELPERS = frozenset({"lookup", "reverseLookup"})
ENTITY_HELPERS = frozenset({"externalId", "bssId"})
