"""Reading JSON and YAML documents, and finding the line a JSON pointer points at.

Line maps are built lazily — only when a problem has to be reported — so loading
a large vendor spec costs one ``json.loads`` (or one libyaml parse).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import yaml

from shared.connector.problems import Problem
from shared.json_pointer import join_pointer, split_pointer

try:  # libyaml when present: much faster on large specs
    _BaseLoader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _BaseLoader = yaml.SafeLoader


class _JsonCompatibleLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """Safe YAML loader that reads a document as JSON would: dates stay strings, and
    every mapping key is the string written (``200:`` → ``"200"``, ``true:`` →
    ``"true"``), so a vendor's unquoted response codes are the keys OpenAPI expects
    and ``$ref``s to them resolve."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[str, Any]:
        if not isinstance(node, yaml.MappingNode):
            return super().construct_mapping(node, deep=deep)  # raises the usual error
        self.flatten_mapping(node)  # `<<` merge keys, as the safe loader does
        mapping: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    "found a key that is not a scalar (JSON keys are strings)",
                    key_node.start_mark,
                )
            mapping[key_node.value] = self.construct_object(value_node, deep=deep)
        return mapping


_JsonCompatibleLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}


def resolve_pointer(document: Any, pointer: str) -> Any:
    """The value at ``pointer``; raises ``KeyError`` when there is none."""
    node = document
    for token in split_pointer(pointer):
        if isinstance(node, dict):
            if token not in node:
                raise KeyError(pointer)
            node = node[token]
        elif isinstance(node, list):
            if not token.isdigit() or int(token) >= len(node):
                raise KeyError(pointer)
            node = node[int(token)]
        else:
            raise KeyError(pointer)
    return node


@dataclasses.dataclass
class SourceFile:
    """One parsed file and what is needed to point into it."""

    path: Path
    text: str
    data: Any
    format: str  # "json" or "yaml"
    _lines: dict[str, int] | None = dataclasses.field(default=None, repr=False)

    def line_of(self, pointer: str) -> int | None:
        """1-based line where the value at ``pointer`` (or its nearest parent) starts."""
        if self._lines is None:
            self._lines = (
                _json_line_map(self.text) if self.format == "json" else _yaml_line_map(self.text)
            )
        while True:
            line = self._lines.get(pointer)
            if line is not None or not pointer:
                return line
            pointer = pointer.rsplit("/", 1)[0]


class SourceError(Exception):
    """A file that cannot be read or parsed; carries one located ``Problem``."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def read_source(path: str | Path) -> SourceFile:
    """Read and parse a JSON or YAML file.

    Raises ``SourceError`` (with file and line) when the file is missing, is not
    text, or does not parse.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SourceError(Problem("", "file not found", file=str(path))) from None
    except IsADirectoryError:
        raise SourceError(Problem("", "is a directory, not a file", file=str(path))) from None
    except UnicodeDecodeError:
        raise SourceError(Problem("", "is not UTF-8 text", file=str(path))) from None
    except OSError as exc:
        raise SourceError(Problem("", f"cannot be read ({exc.strerror})", file=str(path))) from None
    return parse_source(text, path)


def parse_source(text: str, path: Path) -> SourceFile:
    """Parse ``text``: JSON when it looks like JSON (or the file says .json), else YAML."""
    stripped = text.lstrip()
    looks_json = path.suffix.lower() == ".json" or stripped.startswith(("{", "["))
    if looks_json:
        try:
            return SourceFile(path, text, json.loads(text), "json")
        except json.JSONDecodeError as exc:
            raise SourceError(
                Problem("", f"is not valid JSON: {exc.msg}", file=str(path), line=exc.lineno)
            ) from None
    try:
        data = yaml.load(text, Loader=_JsonCompatibleLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = getattr(exc, "problem", None) or str(exc)
        raise SourceError(
            Problem(
                "",
                f"is not valid YAML: {reason}",
                file=str(path),
                line=mark.line + 1 if mark else None,
            )
        ) from None
    return SourceFile(path, text, data, "yaml")


# -- line maps ---------------------------------------------------------------------------

_JSON_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"]+')


def _json_line_map(text: str) -> dict[str, int]:
    """Map every JSON pointer in ``text`` to the line of its key (or array item).

    One pass of a tokenizer that skips whitespace; a line number is the count of line
    breaks before a token, taken only where a key or an item starts (a 2 MB spec with
    hundreds of problems is located in a fraction of a second)."""
    lines: dict[str, int] = {"": 1}
    # each frame: [pointer, is_object, next_index, pending_key_pointer]
    stack: list[list[Any]] = []
    count = text.count
    line, scanned = 1, 0
    expect_key = False
    for match in _JSON_TOKEN.finditer(text):
        tok = match.group()
        first = tok[0]
        if first == ",":
            if stack and stack[-1][1]:
                expect_key = True
            continue
        if first == ":":
            continue
        if first in "}]":
            if stack:
                stack.pop()
            expect_key = False
            continue
        start = match.start()
        line += count("\n", scanned, start)
        scanned = start
        if expect_key and first == '"':
            key = tok[1:-1] if "\\" not in tok else json.loads(tok)
            if "~" in key or "/" in key:
                key = key.replace("~", "~0").replace("/", "~1")
            frame = stack[-1]
            frame[3] = pointer = f"{frame[0]}/{key}"
            lines[pointer] = line
            expect_key = False
            continue
        # a value starts here
        pointer = ""
        if stack:
            frame = stack[-1]
            if frame[1]:
                pointer = frame[3]
            else:
                pointer = f"{frame[0]}/{frame[2]}"
                frame[2] += 1
                lines.setdefault(pointer, line)
        if first in "{[":
            stack.append([pointer, first == "{", 0, None])
            expect_key = first == "{"
    return lines


def _yaml_line_map(text: str) -> dict[str, int]:
    try:
        root = yaml.compose(text, Loader=_JsonCompatibleLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}
    todo: list[tuple[str, Any]] = [("", root)]
    while todo:
        pointer, node = todo.pop()
        if node is None:
            continue
        lines.setdefault(pointer, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                child = join_pointer(pointer, str(key_node.value))
                lines[child] = key_node.start_mark.line + 1
                todo.append((child, value_node))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                todo.append((join_pointer(pointer, index), item))
    return lines
