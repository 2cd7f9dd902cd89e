"""Fitting an audit row into ``audit_log``: whatever a message, a handler or a third
party produced, the row goes in (docs/architecture.md §6). Pure, no I/O.

A value a column cannot hold is normalised or cut on the way in, never refused —
a refused row would leave its message with no recorded outcome:

================  ==============================================================
column            a value it cannot hold becomes
================  ==============================================================
``http_status``   NULL outside 100-599
``attempt``       clamped to 0 … 2,147,483,647 (``integer``)
``duration_ms``   NULL unless a finite number; 0 when negative
``direction``     NULL unless ``push`` or ``pull``
``at``            a time without a zone is read as UTC (not a time: now)
every text        NUL and lone surrogates (text that was not UTF-8) → U+FFFD;
                  identifiers cut to 1,000 UTF-8 bytes (an index entry must stay
                  under PostgreSQL's 2,704), the error message to 4,000
                  characters, each cut ending in ``…``
``details``       the same for every key and string (strings cut to 4,000
                  characters); non-finite numbers and integers beyond 64 bits
                  become strings, other values their ``str``; nesting deeper than
                  20 levels becomes ``…``; JSON over 16,000 characters is
                  replaced by a cut ``preview`` of it
================  ==============================================================

What was changed is listed in ``details.normalised`` — the value given for a number
or a direction, how long a cut text was — so nothing is lost silently. Messages and
details are redacted (``shared.logging``) before they are cut, so a cut never
leaves half a secret. The one refusal left is an ``outcome`` that is not one of the
nine (``ValueError``): a bug in the caller, not a value from outside.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from shared.audit.record import AuditRecord, Outcome
from shared.logging import redact, redact_mapping

COLUMNS = (
    "at", "category", "service", "org_id", "instance_id", "entity", "direction", "action",
    "record_id", "external_id", "outcome", "attempt", "http_status", "error_class",
    "error_message", "duration_ms", "run_id", "message_id", "correlation_id", "details",
)
Row = tuple[Any, ...]

INT4_MAX = 2**31 - 1
MAX_IDENT_BYTES = 1000
#: Error messages longer than this are cut (remote error bodies can be huge).
MAX_MESSAGE_CHARS = 4000
MAX_DETAIL_TEXT_CHARS = 4000
MAX_DETAIL_KEY_CHARS = 200
MAX_DETAILS_CHARS = 16_000
MAX_DETAILS_DEPTH = 20
CUT = "…"
NORMALISED = "normalised"

_DIRECTIONS = frozenset({"push", "pull"})
_UNSAFE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_INT64 = 2**63
_FLOAT_MAX = 10**308
_IDENTIFIERS = ("category", "service", "org_id", "instance_id", "entity", "action",
                "record_id", "external_id", "error_class", "run_id", "message_id",
                "correlation_id")

Changes = dict[str, Any]


def to_row(record: AuditRecord) -> Row:
    """The row of ``record`` (``COLUMNS`` order): redacted, every value fitted.

    Raises ``ValueError`` only for an outcome that is not an :class:`Outcome`.
    """
    r = record
    outcome = r.outcome if type(r.outcome) is Outcome else Outcome(r.outcome)
    changes: Changes = {}
    at = r.at
    if type(at) is not datetime or at.tzinfo is None:
        at = _fit_at(at, changes)
    direction = r.direction
    if direction is not None and direction not in _DIRECTIONS:
        changes["direction"] = direction
        direction = None
    idents = (r.category, r.service, r.org_id, r.instance_id, r.entity, r.action, r.record_id,
              r.external_id, r.error_class, r.run_id, r.message_id, r.correlation_id)
    # Identifiers carry no secrets and are not redacted. The hot path, checked for all
    # of them at once: text (anything else fails the join), ASCII, no NUL, and all of
    # them together within one identifier's budget.
    try:
        joined = "".join(filter(None, idents))
    except TypeError:
        joined = None
    if joined is None or not (len(joined) <= MAX_IDENT_BYTES and joined.isascii()
                              and "\x00" not in joined):
        idents = tuple(fit_ident(value, changes, _IDENTIFIERS[index])
                       for index, value in enumerate(idents))
    (category, service, org, instance, entity, action, record_id, external_id, error_class,
     run_id, message_id, correlation_id) = idents
    attempt = r.attempt
    if not (type(attempt) is int and 0 <= attempt <= INT4_MAX):
        attempt = fit_attempt(attempt, changes)
    status = r.http_status
    if status is not None and not (type(status) is int and 100 <= status <= 599):
        status = fit_status(status, changes)
    duration = r.duration_ms
    if not (type(duration) is float and 0.0 <= duration < math.inf):  # NaN fails too
        duration = fit_duration(duration, changes)
    message = r.error_message
    if message is not None:
        message = fit_message(message, changes)
    details = fit_details(r.details, changes) if r.details or changes else "{}"
    return (at, category, service, org, instance, entity, direction, action, record_id,
            external_id, outcome.value, attempt, status, error_class, message, duration, run_id,
            message_id, correlation_id, details)


def _fit_at(at: Any, changes: Changes) -> datetime:
    """A time without a zone is read as UTC; what is not a time becomes now."""
    if not isinstance(at, datetime):
        changes["at"] = at
        return datetime.now(UTC)
    if at.tzinfo is None:
        changes["at"] = "read as UTC"
        return at.replace(tzinfo=UTC)
    return at


# --------------------------------------------------------------------------- texts


def fit_text(value: Any, limit: int) -> str:
    """``value`` as text PostgreSQL accepts (NUL, lone surrogates → U+FFFD), cut to
    ``limit`` characters with a trailing ``…``."""
    text = value if type(value) is str else _str(value)
    if _UNSAFE.search(text) is not None:
        text = _UNSAFE.sub("\ufffd", text)
    if len(text) > limit:
        text = text[: limit - 1] + CUT
    return text


def fit_ident(value: Any, changes: Changes | None = None, column: str = "") -> str | None:
    """An identifier PostgreSQL accepts and can index: :func:`fit_text`'s replacements,
    cut to ``MAX_IDENT_BYTES`` of UTF-8. A change is noted in ``changes[column]``."""
    if value is None:
        return None
    text = value if type(value) is str else _str(value)
    if text.isascii() and len(text) <= MAX_IDENT_BYTES and "\x00" not in text:
        return text  # the hot path: every identifier of every row
    fitted = _UNSAFE.sub("\ufffd", text)
    data = fitted.encode("utf-8")
    cut = len(data) > MAX_IDENT_BYTES
    if cut:
        budget = MAX_IDENT_BYTES - len(CUT.encode("utf-8"))
        fitted = data[:budget].decode("utf-8", "ignore") + CUT
    if changes is not None and fitted != text:
        changes[column] = (f"cut from {len(text)} characters" if cut
                           else "NUL or lone surrogates replaced")
    return fitted


def fit_message(value: str | None, changes: Changes) -> str | None:
    """The error message: redacted, then :func:`fit_text` to ``MAX_MESSAGE_CHARS``."""
    if value is None:
        return None
    text = redact(value if type(value) is str else _str(value))
    fitted = fit_text(text, MAX_MESSAGE_CHARS)
    if len(text) > MAX_MESSAGE_CHARS:
        changes["error_message"] = f"cut from {len(text)} characters"
    return fitted


def _str(value: Any) -> str:
    try:
        return str(value)
    except Exception:  # a value whose __str__ fails is still worth a row
        return f"<{type(value).__name__}>"


# --------------------------------------------------------------------------- numbers


def fit_attempt(value: Any, changes: Changes) -> int:
    """An ``integer`` >= 0: clamped; the value given is noted when it differs."""
    if type(value) is int and 0 <= value <= INT4_MAX:
        return value
    changes["attempt"] = value
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return 0
    return min(max(number, 0), INT4_MAX)


def fit_status(value: Any, changes: Changes) -> int | None:
    """An HTTP status (100-599) or NULL; the value given is noted when it is not one."""
    if value is None or (type(value) is int and 100 <= value <= 599):
        return value
    changes["http_status"] = value
    return None


def fit_duration(value: Any, changes: Changes) -> float | None:
    """Milliseconds >= 0, or NULL for what is not a finite number."""
    if value is None:
        return None
    if type(value) is float and math.isfinite(value):
        return max(0.0, value)
    if type(value) is int and abs(value) < _FLOAT_MAX:
        return max(0.0, float(value))
    changes["duration_ms"] = value
    return None


# --------------------------------------------------------------------------- details


def fit_details(details: Any, changes: Changes) -> str:
    """The ``details`` JSON text: redacted, with ``changes`` under ``normalised``, and
    every value PostgreSQL's ``jsonb`` refuses made acceptable (module docstring)."""
    if not details and not changes:
        return "{}"
    data = details if type(details) is dict or isinstance(details, Mapping) else {
        "details": details}
    if changes:
        data = {**data, NORMALISED: changes}
    if not data:
        return "{}"
    try:  # the common case: small, plain JSON
        text = json.dumps(redact_mapping(data), default=str, ensure_ascii=False,
                          allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return _fit_slowly(data)
    if (len(text) > MAX_DETAILS_CHARS or "\\u0000" in text
            or (not text.isascii() and _SURROGATE.search(text) is not None)):
        return _fit_slowly(data)
    return text


def _fit_slowly(data: Mapping[Any, Any]) -> str:
    shaped = _shape(data, 0)
    fitted = _fit_strings(redact_mapping(shaped))
    text = json.dumps(fitted, ensure_ascii=False)
    if len(text) <= MAX_DETAILS_CHARS:
        return text
    size, preview = len(text), text
    while True:  # escaping may lengthen the preview: halve it until the whole fits
        preview = preview[: len(preview) // 2]
        cut = json.dumps({NORMALISED: {"details": f"cut from {size} characters"},
                          "preview": preview + CUT}, ensure_ascii=False)
        if len(cut) <= MAX_DETAILS_CHARS:
            return cut


def _shape(value: Any, depth: int) -> Any:
    """``value`` as plain JSON data: string keys, finite numbers, bounded depth."""
    if value is None or type(value) is bool or type(value) is str:
        return value
    if isinstance(value, int):
        if -_INT64 <= value < _INT64:
            return int(value)
        return str(value) if value.bit_length() < 10_000 else f"<{value.bit_length()}-bit integer>"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= MAX_DETAILS_DEPTH:
        return CUT
    if isinstance(value, Mapping):
        return {(k if type(k) is str else _str(k)): _shape(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_shape(v, depth + 1) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return _str(value)


def _fit_strings(value: Any) -> Any:
    if type(value) is str:
        return fit_text(value, MAX_DETAIL_TEXT_CHARS)
    if type(value) is dict:
        return {fit_text(k, MAX_DETAIL_KEY_CHARS): _fit_strings(v) for k, v in value.items()}
    if type(value) is list:
        return [_fit_strings(v) for v in value]
    return value
