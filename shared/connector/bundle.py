"""Combining several OpenAPI documents into one connector document.

Vendors often publish one spec per object (HubSpot: companies, contacts, …). A
connector may be built from several: their paths are joined, and their
components are joined too — a component that two specs define *differently*
under the same name is renamed in the later spec (``ContactsV3SimplePublicObjectInput``)
and that spec's ``$ref``s and security requirements are rewritten to match.
Identical definitions are shared.

Provenance records where each part of the bundle came from, so a problem found
in the bundle is reported at its line in the file the connector author edits.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any

from shared.connector.problems import Problem
from shared.connector.source import SourceFile, resolve_pointer
from shared.json_pointer import join_pointer

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@dataclasses.dataclass(frozen=True)
class Origin:
    """Bundle pointers starting with ``prefix`` come from ``source`` at ``source_prefix``."""

    prefix: str
    source: SourceFile
    source_prefix: str


class Provenance:
    """Maps pointers in the bundle back to (file, line, pointer in that file)."""

    def __init__(self) -> None:
        self._origins: list[Origin] = []

    def add(self, prefix: str, source: SourceFile, source_prefix: str) -> None:
        self._origins.append(Origin(prefix, source, source_prefix))

    def locate(self, pointer: str) -> tuple[str | None, int | None, str]:
        """The file, line and in-file pointer where the bundle's ``pointer`` was written.

        Later origins (overlay actions) win over earlier ones; a pointer to something
        that does not exist (a missing key) is placed at its nearest existing parent.
        """
        probe = pointer
        while True:
            for origin in reversed(self._origins):
                if probe != origin.prefix and not probe.startswith(origin.prefix + "/"):
                    continue
                candidate = origin.source_prefix + probe[len(origin.prefix) :]
                if _exists(origin.source.data, candidate):
                    in_file = origin.source_prefix + pointer[len(origin.prefix) :]
                    return (str(origin.source.path), origin.source.line_of(candidate), in_file)
            if not probe:
                return None, None, pointer
            probe = probe.rsplit("/", 1)[0]


def _exists(data: Any, pointer: str) -> bool:
    try:
        resolve_pointer(data, pointer)
    except (KeyError, ValueError):
        return False
    return True


def merge_documents(sources: list[SourceFile]) -> tuple[dict[str, Any], list[Problem], Provenance]:
    """Join several OpenAPI documents; the first one's info, servers and security lead."""
    provenance = Provenance()
    first = sources[0]
    bundle = copy.deepcopy(first.data)
    provenance.add("", first, "")
    problems: list[Problem] = []
    for source in sources[1:]:
        problems += _merge_one(bundle, source, provenance)
    return bundle, problems, provenance


def _merge_one(bundle: dict[str, Any], source: SourceFile, provenance: Provenance) -> list[Problem]:
    other = copy.deepcopy(source.data)
    if not isinstance(other, dict):
        return [Problem("", "is not an OpenAPI document (not an object)", file=str(source.path))]
    problems: list[Problem] = []
    prefix = _component_prefix(other, source)
    renames = _merge_components(bundle, other, source, prefix, provenance)
    if renames:
        _rewrite(other, renames)
    for path, item in (other.get("paths") or {}).items():
        target = bundle.setdefault("paths", {}).setdefault(path, {})
        for key, value in item.items():
            if key in target and target[key] != value:
                problems.append(
                    Problem(
                        join_pointer("/paths", path, key),
                        f"{key.upper() if key in HTTP_METHODS else key} {path} is "
                        "also defined, differently, by an earlier document",
                        file=str(source.path),
                        line=source.line_of(join_pointer("/paths", path, key)),
                    )
                )
                continue
            target[key] = value
            provenance.add(
                join_pointer("/paths", path, key), source, join_pointer("/paths", path, key)
            )
    known_tags = {t.get("name") for t in bundle.get("tags") or [] if isinstance(t, dict)}
    for tag in other.get("tags") or []:
        if isinstance(tag, dict) and tag.get("name") not in known_tags:
            bundle.setdefault("tags", []).append(tag)
    if other.get("servers") and bundle.get("servers") and other["servers"] != bundle["servers"]:
        problems.append(
            Problem(
                "/servers",
                "servers differ from the first document's; the first document's servers are used",
                file=str(source.path),
                line=source.line_of("/servers"),
                severity="warning",
            )
        )
    return problems


def _component_prefix(document: dict[str, Any], source: SourceFile) -> str:
    title = str((document.get("info") or {}).get("title") or source.path.stem)
    words = re.findall(r"[A-Za-z0-9]+", title)
    return "".join(w[:1].upper() + w[1:] for w in words) or "Doc"


def _merge_components(
    bundle: dict[str, Any],
    other: dict[str, Any],
    source: SourceFile,
    prefix: str,
    provenance: Provenance,
) -> dict[str, str]:
    """Add ``other``'s components to the bundle; returns old-ref → new-ref renames."""
    renames: dict[str, str] = {}
    target_components = bundle.setdefault("components", {})
    for section, entries in (other.get("components") or {}).items():
        if not isinstance(entries, dict):
            continue
        target = target_components.setdefault(section, {})
        for name, definition in entries.items():
            new_name = name
            if name in target and target[name] != definition:
                new_name = prefix + name
                suffix = 2
                while new_name in target and target[new_name] != definition:
                    new_name = f"{prefix}{name}{suffix}"
                    suffix += 1
                renames[join_pointer("#/components", section, name)] = join_pointer(
                    "#/components", section, new_name
                )
                if section == "securitySchemes":
                    renames[f"securityScheme:{name}"] = new_name
            if new_name not in target:
                target[new_name] = definition
                provenance.add(
                    join_pointer("/components", section, new_name),
                    source,
                    join_pointer("/components", section, name),
                )
    return renames


def _rewrite(node: Any, renames: dict[str, str]) -> None:
    """Rewrite ``$ref``s and security requirement keys in place."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref in renames:
            node["$ref"] = renames[ref]
        security = node.get("security")
        if isinstance(security, list):
            node["security"] = [
                {renames.get(f"securityScheme:{k}", k): v for k, v in req.items()}
                if isinstance(req, dict)
                else req
                for req in security
            ]
        for key, value in node.items():
            if key != "security":
                _rewrite(value, renames)
    elif isinstance(node, list):
        for item in node:
            _rewrite(item, renames)
