"""The installation file: organizations, connectors, instances, permissions, schedules.

A JSON or YAML file (``schemas/installation.schema.json``) applied declaratively
with ``bss-sync apply FILE``: :func:`apply` makes the database match it, and
applying the same file twice changes nothing. Instances and organizations that
disappear from the file are deactivated, never deleted.

Validation reports **every** problem, each with its JSON pointer, its line when
known and one plain sentence, by raising :class:`InstallationInvalid`; nothing is
written then. A problem never quotes a credential value.
"""

from __future__ import annotations

import dataclasses
import json
import zoneinfo
from collections import Counter
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from shared.credentials import is_reference, reference_problem
from shared.errors import ConfigurationError
from shared.paths import schemas_dir
from shared.storage.config_sync import (
    Change,
    DesiredConnector,
    DesiredInstance,
    DesiredOrganization,
    DesiredSchedule,
    DesiredState,
    sync,
)
from shared.storage.db import Database
from shared.storage.schedules import DEFAULT_CRON, cron_problem
from shared.storage.vocabulary import ENTITIES

SCHEMA_FILE = "installation.schema.json"
LineOf = Callable[[str], int | None]


@dataclasses.dataclass(frozen=True, slots=True)
class InstallationProblem:
    """One located problem: ``file:line: /pointer: sentence``."""

    pointer: str
    message: str
    file: str | None = None
    line: int | None = None

    def format(self) -> str:
        where = (self.file or "<installation>") + (f":{self.line}" if self.line else "")
        return f"{where}: {self.pointer or '/'}: {self.message}"

    def __str__(self) -> str:
        return self.format()


class InstallationInvalid(ConfigurationError):
    """The installation file (or a connector it names) has problems; ``problems`` lists all."""

    def __init__(self, problems: list[InstallationProblem]) -> None:
        count = len(problems)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in the installation: "
                         + "; ".join(p.format() for p in problems[:3])
                         + ("; …" if count > 3 else ""))
        self.problems = problems


@dataclasses.dataclass(frozen=True, slots=True)
class ApplyReport:
    """What ``apply`` changed (or, with ``dry_run``, would change)."""

    path: str
    changes: list[Change]
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def lines(self) -> list[str]:
        """One line per change, or one saying nothing changed."""
        if not self.changes:
            return ["no changes"]
        return [str(c) for c in self.changes]


async def apply(db: Database, path: str | Path, *, dry_run: bool = False) -> ApplyReport:
    """Make the database match the installation file at ``path``.

    Raises :class:`InstallationInvalid` (nothing written) when the file or a
    connector it names has problems, ``InfrastructureError`` on database failure.
    """
    desired = load_installation(path)
    changes = await sync(db, desired, dry_run=dry_run)
    return ApplyReport(str(path), changes, dry_run)


def load_installation(path: str | Path) -> DesiredState:
    """Read, validate and resolve the file (connectors loaded). Raises ``InstallationInvalid``."""
    path = Path(path)
    data, line_of = read_file(path)
    problems = validate(data, line_of, str(path))
    connectors: dict[str, Any] = {}
    if isinstance(data, dict):
        connectors, connector_problems = load_connectors(data, path, line_of)
        problems += connector_problems
        problems += check_permitted_entities(data, connectors, line_of, str(path))
    if problems:  # the installation file's first, in line order, then connector files'
        problems.sort(key=lambda p: (p.file != str(path), p.file or "", p.line or 0))
        raise InstallationInvalid(problems)
    return desired_state(data, connectors)


def read_file(path: Path) -> tuple[Any, LineOf]:
    """The parsed file and a pointer→line function. Raises ``InstallationInvalid``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise InstallationInvalid([InstallationProblem("", f"cannot read the file: {reason}",
                                                       str(path))]) from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        problem = InstallationProblem("", f"not valid JSON: {exc.msg}", str(path), exc.lineno)
        raise InstallationInvalid([problem]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = InstallationProblem("", f"not valid YAML: {getattr(exc, 'problem', exc)}",
                                      str(path), line)
        raise InstallationInvalid([problem]) from None
    # JSON allows tabs between tokens where YAML does not; inside JSON strings a tab
    # is escaped, so replacing them keeps every line number.
    return data, line_locator(text.replace("\t", " ") if path.suffix.lower() == ".json" else text)


def line_locator(text: str) -> LineOf:
    """A function giving the 1-based line of a JSON pointer in ``text`` (JSON or YAML)."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lambda pointer: None

    def line_of(pointer: str) -> int | None:
        node, line = root, (root.start_mark.line + 1 if root is not None else None)
        for token in _tokens(pointer):
            if isinstance(node, yaml.MappingNode):
                match = next(((k, v) for k, v in node.value if k.value == token), None)
                if match is None:
                    return line
                node, line = match[1], match[0].start_mark.line + 1
            elif isinstance(node, yaml.SequenceNode) and token.isdigit() \
                    and int(token) < len(node.value):
                node = node.value[int(token)]
                line = node.start_mark.line + 1
            else:
                return line
        return line

    return line_of


def _tokens(pointer: str) -> list[str]:
    if not pointer:
        return []
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer.lstrip("/").split("/")]


def _pointer(*tokens: Any) -> str:
    return "".join("/" + str(t).replace("~", "~0").replace("/", "~1") for t in tokens)


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((schemas_dir() / SCHEMA_FILE).read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def validate(data: Any, line_of: LineOf, file: str) -> list[InstallationProblem]:
    """Every problem of the parsed file itself (connectors not loaded), in file order."""
    found = [(p, m) for error in _validator().iter_errors(data) for p, m in _schema_problem(error)]
    if isinstance(data, dict):
        found += list(_semantic_problems(data))
    unique = dict.fromkeys(found)
    problems = [InstallationProblem(p, m, file, line_of(p)) for p, m in unique]
    return sorted(problems, key=lambda p: (p.line or 0, p.pointer))


def _schema_problem(error: jsonschema.ValidationError) -> list[tuple[str, str]]:
    """Plain sentences for one schema error; values are never quoted for credentials."""
    pointer = _pointer(*error.absolute_path)
    kind, expected, instance = error.validator, error.validator_value, error.instance
    if kind == "required":
        missing = [name for name in expected if name not in instance]
        return [(pointer, f"the required property {name!r} is missing") for name in missing]
    if kind == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        return [(_pointer(*error.absolute_path, key), f"unknown property {key!r}")
                for key in instance if key not in known]
    if "propertyNames" in error.absolute_schema_path:
        key = str(instance)
        return [(_pointer(*error.absolute_path, key),
                 f"unknown entity {key!r}; entities are {', '.join(ENTITIES)}")]
    if kind == "enum" and "/permissions/" in pointer:
        return [(pointer, f"unknown action {instance!r}; actions are create, update, delete")]
    return [(pointer, _sentence(kind, expected, instance, pointer))]


def _sentence(kind: str, expected: Any, instance: Any, pointer: str) -> str:
    if kind == "pattern":
        if "/credentials/" in pointer:
            return ("a credential must be a reference like env:NAME or file:PATH; the secret "
                    "itself never goes in the installation file")
        if pointer.endswith("/server"):
            return "the server must be an http:// or https:// URL"
        if pointer.endswith("/per"):
            return "the period must look like 1s, 500ms, 1m or 1h"
        return "must use only letters, digits, '-' and '_' (no dots), at most 64 characters"
    if kind == "type":
        names = expected if isinstance(expected, list) else [expected]
        return f"must be {' or '.join(_a(n) for n in names)}, not {_a(_json_type(instance))}"
    if kind == "oneOf" and pointer.endswith("/schedule"):
        return "a schedule is a cron expression or an object with cron, timezone and enabled"
    if kind == "oneOf" and pointer.endswith("/spec"):
        return "spec is one path or a non-empty list of paths"
    if kind in ("minLength", "minItems"):
        return "must not be empty"
    if kind == "minimum":
        return f"must be at least {expected}"
    if kind == "uniqueItems":
        return "lists the same value twice"
    if kind == "enum":
        return f"must be one of {', '.join(map(str, expected))}"
    return f"does not match the installation schema ({kind})"


_ARTICLES = {"object": "an object", "array": "a list", "integer": "an integer"}


def _a(name: str) -> str:
    return _ARTICLES.get(name, f"a {name}")


def _json_type(value: Any) -> str:
    for name, kind in (("boolean", bool), ("integer", int), ("number", float), ("string", str),
                       ("array", list), ("object", dict)):
        if isinstance(value, kind):
            return name
    return "null"


def _dicts(value: Any) -> list[tuple[int, dict[str, Any]]]:
    """``(index, item)`` of the dict items of a list (anything else: nothing)."""
    return [(i, v) for i, v in enumerate(value) if isinstance(v, dict)] \
        if isinstance(value, list) else []


def _semantic_problems(data: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """What the schema cannot say: duplicates, references, cron, timezones, env names.

    Tolerates a file that also breaks the schema, so every problem is reported at once.
    """
    connectors = _dicts(data.get("connectors"))
    yield from _duplicates("connector", [(_pointer("connectors", i, "id"), c.get("id"))
                                         for i, c in connectors])
    orgs = _dicts(data.get("organizations"))
    yield from _duplicates("organization", [(_pointer("organizations", i, "id"), o.get("id"))
                                            for i, o in orgs])
    instances = [(_pointer("organizations", i, "instances", j), inst)
                 for i, org in orgs for j, inst in _dicts(org.get("instances"))]
    yield from _duplicates("instance", [(p + "/id", inst.get("id")) for p, inst in instances])
    yield from _schedule_problems("", data)
    for i, org in orgs:
        yield from _schedule_problems(_pointer("organizations", i), org)
    known = {c.get("id") for _, c in connectors}
    for base, inst in instances:
        yield from _schedule_problems(base, inst)
        connector = inst.get("connector")
        if isinstance(connector, str) and connector not in known:
            yield (base + "/connector",
                   f"unknown connector {connector!r}; declare it under /connectors")
        credentials = inst.get("credentials")
        for name, ref in (credentials.items() if isinstance(credentials, dict) else ()):
            problem = reference_problem(ref)
            if problem and is_reference(ref):  # a non-reference is the schema's finding
                yield base + _pointer("credentials", name), f"credential {name!r} {problem}"


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


def load_connectors(data: dict[str, Any], path: Path,
                    line_of: LineOf) -> tuple[dict[str, Any], list[InstallationProblem]]:
    """``{id: ConnectorDocument}`` for every connector, and their problems, located."""
    from shared.connector import DocumentInvalid, load_connector

    loaded: dict[str, Any] = {}
    problems: list[InstallationProblem] = []
    for i, entry in _dicts(data.get("connectors")):
        specs = [entry.get("spec")] if isinstance(entry.get("spec"), str) else entry.get("spec")
        if not isinstance(entry.get("id"), str) or entry["id"] in loaded or not specs \
                or not all(isinstance(s, str) and s for s in specs):
            continue  # the schema and duplicate checks report it
        files = [path.parent / spec for spec in specs]
        overlay = path.parent / entry["overlay"] if isinstance(entry.get("overlay"), str) \
            else None
        pointer = _pointer("connectors", i)
        missing = [(f"/spec{'' if isinstance(entry['spec'], str) else f'/{n}'}", p)
                   for n, p in enumerate(files) if not p.is_file()]
        if overlay is not None and not overlay.is_file():
            missing.append(("/overlay", overlay))
        for suffix, file in missing:
            problems.append(InstallationProblem(pointer + suffix, f"file {file} does not exist",
                                                str(path), line_of(pointer + suffix)))
        if missing:
            continue
        try:
            loaded[entry["id"]] = load_connector(files, overlay=overlay)
        except DocumentInvalid as exc:
            problems += [_connector_problem(entry["id"], p) for p in exc.problems
                         if getattr(p, "severity", "error") == "error"]
    return loaded, problems


def _connector_problem(connector_id: str, problem: Any) -> InstallationProblem:
    return InstallationProblem(problem.pointer, f"connector {connector_id!r}: {problem.message}",
                               problem.file, problem.line)


def connector_entities(document: Any) -> set[str] | None:
    """The entities a loaded connector synchronizes, or ``None`` if it cannot tell."""
    objects = getattr(document, "objects", None)
    if isinstance(objects, dict) or hasattr(objects, "values"):
        return {getattr(o, "entity", None) for o in objects.values()} - {None}
    sync_block = (getattr(document, "document", None) or {}).get("x-synchronization") or {}
    raw = sync_block.get("objects")
    if isinstance(raw, dict):
        return {o.get("entity") for o in raw.values() if isinstance(o, dict)} - {None}
    return None


def check_permitted_entities(data: dict[str, Any], connectors: dict[str, Any], line_of: LineOf,
                             file: str) -> list[InstallationProblem]:
    """A permission for an entity the instance's connector does not synchronize is a problem."""
    problems: list[InstallationProblem] = []
    for i, org in _dicts(data.get("organizations")):
        for j, inst in _dicts(org.get("instances")):
            connector = inst.get("connector")
            entities = connector_entities(connectors.get(connector)) \
                if isinstance(connector, str) and connector in connectors else None
            permissions = inst.get("permissions")
            if entities is None or not isinstance(permissions, dict):
                continue
            for entity in permissions:
                if entity not in ENTITIES:
                    continue  # the schema reports it
                if entity not in entities:
                    pointer = _pointer("organizations", i, "instances", j, "permissions", entity)
                    problems.append(InstallationProblem(
                        pointer, f"connector {connector!r} does not synchronize "
                                 f"{entity} records (it has: {', '.join(sorted(entities))})",
                        file, line_of(pointer)))
    return problems


def desired_state(data: dict[str, Any], connectors: dict[str, Any]) -> DesiredState:
    """The rows a valid file describes. Pure."""
    timezone = data.get("timezone", "UTC")
    return DesiredState(
        connectors=[_desired_connector(entry, connectors[entry["id"]])
                    for entry in data.get("connectors", [])],
        organizations=[DesiredOrganization(o["id"], o["name"], o.get("timezone", timezone),
                                           o.get("active", True))
                       for o in data.get("organizations", [])],
        instances=[_desired_instance(org, inst) for org in data.get("organizations", [])
                   for inst in org.get("instances", [])],
        schedules=_desired_schedules(data, timezone),
    )


def _desired_connector(entry: dict[str, Any], document: Any) -> DesiredConnector:
    specs = [entry["spec"]] if isinstance(entry["spec"], str) else list(entry["spec"])
    return DesiredConnector(entry["id"], str(document.title), str(document.version),
                            document.sha256, document.document,
                            {"spec": specs, "overlay": entry.get("overlay")})


def _desired_instance(org: dict[str, Any], inst: dict[str, Any]) -> DesiredInstance:
    settings = dict(inst.get("settings", {}))
    for key in ("lookups", "rateLimit", "timeouts"):
        if key in inst:
            settings[key] = inst[key]
    permissions = frozenset(
        (entity, direction, action)
        for entity, directions in inst.get("permissions", {}).items()
        for direction, actions in directions.items() for action in actions
    )
    return DesiredInstance(
        id=inst["id"], org_id=org["id"], connector_id=inst["connector"], name=inst["name"],
        server_url=inst.get("server"), variables=dict(inst.get("variables", {})),
        credentials=dict(inst.get("credentials", {})), settings=settings,
        active=bool(org.get("active", True) and inst.get("active", True)),
        permissions=permissions,
    )


def _schedule(scope: str, scope_id: str, value: str | dict[str, Any],
              fallback_cron: str = DEFAULT_CRON, timezone: str | None = None) -> DesiredSchedule:
    if isinstance(value, str):
        return DesiredSchedule(scope, scope_id, value, timezone)
    return DesiredSchedule(scope, scope_id, value.get("cron", fallback_cron),
                           value.get("timezone", timezone), value.get("enabled", True))


def _desired_schedules(data: dict[str, Any], timezone: str) -> list[DesiredSchedule]:
    schedules = [_schedule("installation", "", data.get("schedule", DEFAULT_CRON),
                           timezone=timezone)]
    installation_cron = schedules[0].cron
    for org in data.get("organizations", []):
        if "schedule" in org:
            schedules.append(_schedule("organization", org["id"], org["schedule"],
                                       installation_cron))
        for inst in org.get("instances", []):
            if "schedule" in inst:
                schedules.append(_schedule("instance", inst["id"], inst["schedule"],
                                           installation_cron))
    return schedules
