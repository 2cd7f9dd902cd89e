"""Every problem of an installation file itself (the connectors it names are not loaded).

Two passes, both reporting everything at once: the JSON Schema
(``schemas/installation.schema.json``), whose errors become sentences through the
project's one translator (:mod:`shared.schema_errors`) with the installation's
own words for credentials, ids, entities and schedules; then what a schema cannot
say: duplicate ids, unknown connector references, cron expressions, time zones,
credential references (their syntax; a ``file:`` path inside ``CREDENTIALS_DIR``)
and secrets written where a reference belongs (:mod:`.literal_secrets`). A
credential value is never quoted.
"""

from __future__ import annotations

import zoneinfo
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jsonschema import ValidationError

from shared.connector.problems import Problem
from shared.credentials import is_reference, reference_problem
from shared.installation.file import LineOf
from shared.installation.literal_secrets import literal_secret_problems
from shared.json_pointer import join_pointer
from shared.schema_errors import located_sentences
from shared.schemas import ENTITIES, validator
from shared.storage.schedules import cron_problem
from shared.storage.vocabulary import ACTIONS, ID_PATTERN

SCHEMA = "installation"


def validate(data: Any, line_of: LineOf, file: str, *,
             credentials_dir: str | Path | None = None) -> list[Problem]:
    """Every problem of the parsed file ``data`` (read from ``file``), in line order.

    With ``credentials_dir`` (``CREDENTIALS_DIR``), ``file:`` references must name a
    file in it (:func:`shared.credentials.confined_path`).
    """
    found: list[tuple[str, str]] = list(
        located_sentences(validator(SCHEMA).iter_errors(data), wording=_wording))
    if isinstance(data, dict):
        found += list(_semantic_problems(data, credentials_dir))
    problems = [Problem(p, m, file, line_of(p)) for p, m in dict.fromkeys(found)]
    return sorted(problems, key=lambda p: (p.line or 0, p.pointer))


def entries(value: Any) -> list[tuple[int, dict[str, Any]]]:
    """``(index, item)`` of the objects in a list (of anything else: nothing).

    The checks after the schema use it to tolerate a file that also breaks the schema.
    """
    return [(i, v) for i, v in enumerate(value) if isinstance(v, dict)] \
        if isinstance(value, list) else []


def _wording(error: ValidationError, pointer: str) -> str | None:
    """The installation's own sentence for a schema error, or ``None`` for the general one."""
    kind, instance = error.validator, error.instance
    if "propertyNames" in error.relative_schema_path:
        return f"unknown entity {instance!r}; entities are {', '.join(ENTITIES)}"
    if kind == "enum" and "/permissions/" in pointer:
        return f"unknown action {instance!r}; actions are {', '.join(ACTIONS)}"
    if kind == "pattern":
        if "/credentials/" in pointer:
            return ("a credential must be a reference like env:NAME or file:PATH; the secret "
                    "itself never goes in the installation file")
        if pointer.endswith("/server"):
            return "the server must be an http:// or https:// URL"
        if pointer.endswith("/per"):
            return "the period must look like 1s, 500ms, 1m or 1h"
        if error.validator_value == ID_PATTERN:
            return "must use only letters, digits, '-' and '_' (no dots), at most 64 characters"
    if kind == "oneOf" and pointer.endswith("/schedule"):
        return "a schedule is a cron expression or an object with cron, timezone and enabled"
    if kind == "oneOf" and pointer.endswith("/spec"):
        return "spec is one path or a non-empty list of paths"
    return None


def _semantic_problems(data: dict[str, Any],
                       credentials_dir: str | Path | None) -> Iterator[tuple[str, str]]:
    """What the schema cannot say: duplicates, references, cron, timezones, references,
    literal secrets."""
    connectors = entries(data.get("connectors"))
    yield from _duplicates("connector", [(join_pointer("/connectors", i, "id"), c.get("id"))
                                         for i, c in connectors])
    orgs = entries(data.get("organizations"))
    yield from _duplicates("organization", [(join_pointer("/organizations", i, "id"),
                                             o.get("id")) for i, o in orgs])
    instances = [(join_pointer("/organizations", i, "instances", j), inst)
                 for i, org in orgs for j, inst in entries(org.get("instances"))]
    yield from _duplicates("instance", [(p + "/id", inst.get("id")) for p, inst in instances])
    yield from _schedule_problems("", data)
    for i, org in orgs:
        yield from _schedule_problems(join_pointer("/organizations", i), org)
    known = {c.get("id") for _, c in connectors}
    for base, inst in instances:
        yield from _schedule_problems(base, inst)
        connector = inst.get("connector")
        if isinstance(connector, str) and connector not in known:
            yield (base + "/connector",
                   f"unknown connector {connector!r}; declare it under /connectors")
        credentials = inst.get("credentials")
        for name, ref in (credentials.items() if isinstance(credentials, dict) else ()):
            problem = reference_problem(ref, credentials_dir)
            if problem and is_reference(ref):  # a non-reference is the schema's finding
                yield join_pointer(base, "credentials", name), f"credential {name!r} {problem}"
        yield from literal_secret_problems(base, inst)
        settings = inst.get("settings")
        if isinstance(settings, dict) and "conflict" in settings:
            yield (join_pointer(base, "settings", "conflict"),
                   "the conflict policy belongs at the instance's top level (conflict), "
                   "not under settings")


def _duplicates(kind: str, ids: list[tuple[str, Any]]) -> Iterator[tuple[str, str]]:
    ids = [(pointer, value) for pointer, value in ids if isinstance(value, str)]
    counts = Counter(value for _, value in ids)
    seen: set[str] = set()
    for pointer, value in ids:
        if counts[value] > 1:
            if value in seen:
                yield pointer, f"{kind} id {value!r} is used more than once"
            seen.add(value)


def _schedule_problems(base: str, owner: dict[str, Any]) -> Iterator[tuple[str, str]]:
    yield from _timezone_problem(base + "/timezone", owner.get("timezone"))
    schedule = owner.get("schedule")
    if isinstance(schedule, dict):
        cron, pointer = schedule.get("cron"), base + "/schedule/cron"
        yield from _timezone_problem(base + "/schedule/timezone", schedule.get("timezone"))
    else:
        cron, pointer = schedule, base + "/schedule"
    if isinstance(cron, str) and cron and (problem := cron_problem(cron)):
        yield pointer, f"invalid cron expression: {problem}"


def _timezone_problem(pointer: str, name: Any) -> Iterator[tuple[str, str]]:
    if isinstance(name, str) and name and not _valid_timezone(name):
        yield pointer, f"unknown timezone {name!r} (use an IANA name such as Europe/Paris)"


def _valid_timezone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True
