"""OpenAPI Overlay Specification 1.0: apply an overlay document to an OpenAPI document.

This is how a connector adds ``x-synchronization`` (and any fix it needs) to a
vendor's *unmodified* spec, so taking the vendor's next release is a file swap.

Semantics (Overlay 1.0.0 §4.4): each action's ``target`` is an RFC 9535 JSONPath
selecting nodes; ``remove: true`` removes them; otherwise ``update`` is merged
into each: objects are merged recursively (scalars and arrays inside them are
replaced), and when the target itself is an array the update is appended.
Actions apply in order.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpath

from shared.connector.problems import Problem
from shared.json_pointer import join_pointer

OVERLAY_VERSIONS = ("1.0.0", "1.0")


def is_overlay(data: Any) -> bool:
    """Whether a parsed document is an Overlay document (has an ``overlay`` version)."""
    return isinstance(data, dict) and "overlay" in data and "actions" in data


def check_overlay(data: Any) -> list[Problem]:
    """Structural problems of an overlay document (pointers into the overlay file)."""
    if not isinstance(data, dict):
        return [Problem("", "an overlay must be an object with 'overlay', 'info' and 'actions'")]
    problems: list[Problem] = []
    version = data.get("overlay")
    if not isinstance(version, str) or not version.startswith("1.0"):
        problems.append(
            Problem("/overlay", f'overlay version {version!r} is not supported; use "1.0.0"')
        )
    actions = data.get("actions")
    if not isinstance(actions, list) or not actions:
        problems.append(Problem("/actions", "an overlay needs a non-empty 'actions' array"))
        return problems
    for index, action in enumerate(actions):
        where = f"/actions/{index}"
        if not isinstance(action, dict):
            problems.append(Problem(where, "an action must be an object"))
            continue
        target = action.get("target")
        if not isinstance(target, str):
            problems.append(Problem(where, "an action needs a 'target' JSONPath string"))
        else:
            try:
                jsonpath.compile(target)
            except jsonpath.JSONPathError as exc:
                first_line = str(exc).splitlines()[0]
                problems.append(Problem(f"{where}/target", f"invalid JSONPath: {first_line}"))
        if "update" not in action and not action.get("remove"):
            problems.append(Problem(where, "an action needs 'update' or 'remove: true'"))
    return problems


def apply_overlay(
    document: dict[str, Any], overlay: dict[str, Any]
) -> tuple[dict[str, Any], list[Problem], list[tuple[str, str]]]:
    """Apply ``overlay`` to a copy of ``document``.

    Returns the new document, problems (pointers into the overlay file: an action
    whose target matches nothing is reported, as it usually means the vendor
    renamed something) and provenance: ``(document pointer, overlay pointer)``
    pairs telling where each updated part came from.
    """
    result = copy.deepcopy(document)
    problems: list[Problem] = []
    provenance: list[tuple[str, str]] = []
    for index, action in enumerate(overlay.get("actions") or []):
        where = f"/actions/{index}"
        try:
            matches = list(jsonpath.finditer(action["target"], result))
        except jsonpath.JSONPathError as exc:
            problems.append(
                Problem(f"{where}/target", f"invalid JSONPath: {str(exc).splitlines()[0]}")
            )
            continue
        if not matches:
            problems.append(
                Problem(
                    f"{where}/target",
                    f"target {action['target']!r} matches nothing in the document",
                )
            )
            continue
        if action.get("remove"):
            # Remove deepest/last first so earlier indices stay valid.
            for match in sorted(matches, key=lambda m: list(m.parts), reverse=True):
                _remove(result, match.parts)
            continue
        update = action["update"]
        for match in matches:
            node = match.obj
            pointer = join_pointer("", *match.parts)
            if isinstance(node, dict) and isinstance(update, dict):
                _merge(node, update)
                provenance.append((pointer, f"{where}/update"))
            elif isinstance(node, list):
                node.extend(
                    copy.deepcopy(update) if isinstance(update, list) else [copy.deepcopy(update)]
                )
                provenance.append((pointer, f"{where}/update"))
            else:
                problems.append(
                    Problem(
                        f"{where}/update",
                        f"cannot merge an update into the {type(node).__name__} "
                        f"at {pointer or '/'}",
                    )
                )
    return result, problems, provenance


def _merge(target: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _remove(document: Any, parts: tuple[Any, ...]) -> None:
    if not parts:
        return
    parent = document
    for part in parts[:-1]:
        parent = parent[part]
    last = parts[-1]
    if isinstance(parent, dict):
        parent.pop(last, None)
    elif isinstance(parent, list) and isinstance(last, int) and last < len(parent):
        del parent[last]
