"""The connector documents an installation file names: loaded, and held to its permissions.

A connector that is missing or invalid is reported with its own file and line
(its problems prefixed with the connector id); a permission for an entity the
instance's connector does not synchronize is a problem of the installation file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from shared.connector import DocumentInvalid, Problem, load_connector
from shared.installation.file import LineOf
from shared.installation.validation import entries
from shared.json_pointer import join_pointer
from shared.schemas import ENTITIES


def load_connectors(data: dict[str, Any], path: Path,
                    line_of: LineOf) -> tuple[dict[str, Any], list[Problem]]:
    """``{id: ConnectorDocument}`` for every connector of ``data``, and their problems.

    Spec, overlay and ``refs`` paths are relative to ``path``'s folder; a ``$ref`` to
    another document (or the overlay's ``extends``) resolves through ``refs`` ({URL:
    file}) or to a file of ``spec`` (``shared.connector.external_refs``). An entry the schema or
    the duplicate check rejects is skipped (they report it).
    """
    loaded: dict[str, Any] = {}
    problems: list[Problem] = []
    for i, entry in entries(data.get("connectors")):
        specs = [entry.get("spec")] if isinstance(entry.get("spec"), str) else entry.get("spec")
        if not isinstance(entry.get("id"), str) or entry["id"] in loaded or not specs \
                or not all(isinstance(s, str) and s for s in specs):
            continue
        files = [path.parent / spec for spec in specs]
        overlay = path.parent / entry["overlay"] if isinstance(entry.get("overlay"), str) \
            else None
        pointer = join_pointer("/connectors", i)
        missing = [(f"/spec{'' if isinstance(entry['spec'], str) else f'/{n}'}", p)
                   for n, p in enumerate(files) if not p.is_file()]
        if overlay is not None and not overlay.is_file():
            missing.append(("/overlay", overlay))
        refs = {url: path.parent / file for url, file in (entry.get("refs") or {}).items()}
        missing += [(join_pointer("/refs", url), file) for url, file in refs.items()
                    if not file.is_file()]
        for suffix, file in missing:
            problems.append(Problem(pointer + suffix, f"file {file} does not exist",
                                    str(path), line_of(pointer + suffix)))
        if missing:
            continue
        try:
            loaded[entry["id"]] = load_connector(files, overlay=overlay, refs=refs,
                                                 hint=_refs_hint(pointer))
        except DocumentInvalid as exc:
            problems += [_connector_problem(entry["id"], p) for p in exc.problems
                         if p.severity == "error"]
    return loaded, problems


def _refs_hint(pointer: str) -> Any:
    """How an installation file maps a URL to a file: the connector entry's ``refs``."""
    return lambda url: f'"refs": {{"{url}": FILE}} in {pointer}'


def _connector_problem(connector_id: str, problem: Problem) -> Problem:
    return dataclasses.replace(problem, message=f"connector {connector_id!r}: {problem.message}")


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
                             file: str) -> list[Problem]:
    """A permission for an entity the instance's connector does not synchronize is a problem."""
    problems: list[Problem] = []
    for i, org in entries(data.get("organizations")):
        for j, inst in entries(org.get("instances")):
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
                    pointer = join_pointer("/organizations", i, "instances", j, "permissions",
                                           entity)
                    problems.append(Problem(
                        pointer, f"connector {connector!r} does not synchronize "
                                 f"{entity} records (it has: {', '.join(sorted(entities))})",
                        file, line_of(pointer)))
    return problems
