"""External ``$ref``s: references to other files or URLs, resolved to files given, never
fetched.

Vendors split their specs (``$ref: common.yaml#/components/schemas/Money``, or the URL
where that file is published). bss-sync never fetches a URL: a reference resolves to a
file it was given (:class:`RefFiles`), tried in this order —

1. an explicit mapping (``--ref URL=FILE``; ``refs`` in an installation file), by the
   URL as resolved or as written;
2. a given file whose top-level ``$id`` is that URL;
3. the file itself, when the URL is a local path (a ``./common.yaml`` beside the spec);
4. a given file of the same file name (the URL's last segment).

What a reference reaches is copied into the bundle's ``components`` (the section its
place says: a schema, a parameter, a response…; a path item is copied in place) and the
``$ref`` rewritten to it, so everything after the loader sees one self-contained
document, as ``bss-sync bundle`` writes it. Provenance maps the copies back to the file
and line they came from. A reference that resolves to nothing is one problem at the
``$ref``, naming the option that fixes it.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urldefrag, urljoin, urlsplit
from urllib.request import url2pathname

from shared.connector.bundle import Provenance
from shared.connector.problems import Problem
from shared.connector.source import SourceError, SourceFile, read_source, resolve_pointer
from shared.json_pointer import join_pointer, split_pointer

_NAME = re.compile(r"[^A-Za-z0-9._-]+")
# a $ref whose value does not start with # (JSON, or YAML quoted, plain or in a flow)
_EXTERNAL_REF = re.compile(r"""\$ref["']?\s*:(?![\s"']*#)""")
# the key a $ref sits under (its node's parent) → the components section it belongs in
_SECTION_BY_PARENT = {"parameters": "parameters", "responses": "responses",
                      "headers": "headers", "examples": "examples", "links": "links",
                      "callbacks": "callbacks"}


def cli_hint(url: str) -> str:
    """How a ``bss-sync validate|preview|bundle`` user maps ``url`` to a file."""
    return f"--ref {url}=FILE"


@dataclasses.dataclass
class RefFiles:
    """The files a non-local ``$ref`` may resolve to. ``hint(url)`` says how the author
    maps a URL to a file where these files came from (``--ref URL=FILE``)."""

    files: Sequence[SourceFile] = ()
    explicit: Mapping[str, SourceFile] = dataclasses.field(default_factory=dict)
    hint: Callable[[str], str] = cli_hint
    _local: dict[Path, SourceFile | None] = dataclasses.field(default_factory=dict)

    def find(self, url: str, written: str = "") -> SourceFile | str:
        """The file for document ``url`` (no fragment; ``written``: as the ``$ref`` spells
        it), or the sentence saying why there is none."""
        for key in (url, written):
            if key and key in self.explicit:
                return self.explicit[key]
        by_id = [f for f in self.files if _own_id(f) == url]
        if by_id:
            return by_id[0]
        local = _file_path(url)
        if local is not None:
            given = [f for f in self.files if _same_file(f.path, local)]
            if given:
                return given[0]
            if local.is_file():
                return self._read(_shown(local))
        return self._by_name(url)

    def base(self, source: SourceFile) -> str:
        """The URL relative references in ``source`` are read against: its ``$id``, else
        where it is."""
        return _own_id(source) or source.path.resolve().as_uri()

    def _by_name(self, url: str) -> SourceFile | str:
        name = PurePosixPath(unquote(urlsplit(url).path)).name
        named = [f for f in self.files if f.path.name == name] if name else []
        if len(named) > 1:
            return (f"{name} could be any of {', '.join(str(f.path) for f in named)}: "
                    f"say which with {self.hint(url)}")
        if named:
            return named[0]
        where = "file" if _file_path(url) is not None else "document"
        return (f"{url} is another {where}, which bss-sync does not fetch: give "
                f"{name or 'it'} with the spec(s), or map it with {self.hint(url)}")

    def _read(self, path: Path) -> SourceFile | str:
        key = path.resolve()
        if key not in self._local:
            try:
                self._local[key] = read_source(path)
            except SourceError as exc:
                self._local[key] = None
                return f"{path} {exc.problem.message}"
        found = self._local[key]
        return found if found is not None else f"{path} cannot be read"


def external_refs(node: Any, pointer: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """``(pointer, node)`` of every node under ``node`` whose ``$ref`` is not local."""
    stack = [(node, pointer)]
    while stack:
        current, where = stack.pop()
        if isinstance(current, dict):
            ref = current.get("$ref")
            if isinstance(ref, str) and not ref.startswith("#"):
                yield where, current
            stack += [(v, join_pointer(where, k)) for k, v in current.items()
                      if isinstance(v, dict | list)]
        elif isinstance(current, list):
            stack += [(v, join_pointer(where, i)) for i, v in enumerate(current)
                      if isinstance(v, dict | list)]


def mentions_external_refs(source: SourceFile) -> bool:
    """Whether ``source``'s text may hold a non-local ``$ref`` (a scan of the text: a
    walk of a 2 MB spec costs a tenth of a second)."""
    return _EXTERNAL_REF.search(source.text) is not None


def referenced_sources(sources: Sequence[SourceFile], refs: RefFiles) -> set[int]:
    """Indexes of the ``sources`` another one's ``$ref``s resolve to (documents referenced;
    the loader keeps those with ``paths`` as specs too)."""
    found: set[int] = set()
    for source in filter(mentions_external_refs, sources):
        for _, node in external_refs(source.data):
            try:
                url, _ = urldefrag(urljoin(refs.base(source), node["$ref"]))
                target = refs.find(url, node["$ref"].split("#", 1)[0])
            except ValueError:
                continue  # reported when the bundle's references are resolved
            for index, candidate in enumerate(sources):
                if candidate is target and candidate is not source:
                    found.add(index)
    return found


def internalize(bundle: dict[str, Any], provenance: Provenance, refs: RefFiles,
                sources: Sequence[SourceFile]) -> list[Problem]:
    """Resolve every non-local ``$ref`` of ``bundle`` in place (see the module); returns a
    problem (at the bundle pointer of the ``$ref``) for each that resolves to nothing."""
    if not any(map(mentions_external_refs, sources)):
        return []  # the common case, without walking a large spec
    by_file = {str(s.path): s for s in sources}
    importer = _Importer(bundle, provenance, refs, sources[0] if sources else None)
    for pointer, node in list(external_refs(bundle)):
        file, _, _ = provenance.locate(pointer)
        origin = by_file.get(file or "")
        base = refs.base(origin) if origin is not None else ""
        importer.resolve(node, pointer, base)
        importer.drain()
    return importer.problems


class _Importer:
    """Copies what references reach into the bundle, once per (file, fragment)."""

    def __init__(self, bundle: dict[str, Any], provenance: Provenance, refs: RefFiles,
                 leading: SourceFile | None) -> None:
        self.leading = leading  # the bundle's first spec: its pointers are the bundle's
        self.bundle = bundle
        self.provenance = provenance
        self.refs = refs
        self.done: dict[tuple[int, str], str] = {}
        self.problems: list[Problem] = []
        self.pending: list[tuple[Any, str, SourceFile]] = []  # copies to look into

    def resolve(self, node: dict[str, Any], pointer: str, base: str) -> None:
        """Rewrite ``node``'s ``$ref`` (read against ``base``) to a local one."""
        ref = node["$ref"]
        where = join_pointer(pointer, "$ref")
        try:
            url, fragment = urldefrag(urljoin(base, ref) if base else ref)
            source = self.refs.find(url, ref.split("#", 1)[0]) if ref.strip() else \
                "it names no document"
        except ValueError as exc:  # urllib refuses it (a bad IPv6 host…)
            source = f"not a URL ({exc})"
        if isinstance(source, str):
            self.problems.append(Problem(where, f"$ref {ref!r}: {source}"))
            return
        self._point(node, pointer, source, unquote(fragment), where)

    def _point(self, node: dict[str, Any], pointer: str, source: SourceFile, fragment: str,
               where: str) -> None:
        if fragment and not fragment.startswith("/"):
            self.problems.append(Problem(where, f"$ref {node['$ref']!r}: the part after # is "
                                                "not a JSON pointer (an anchor)"))
            return
        try:
            target = resolve_pointer(source.data, fragment)
        except (KeyError, ValueError):
            self.problems.append(Problem(where, f"$ref {node['$ref']!r} points at nothing in "
                                                f"{source.path}"))
            return
        if source is self.leading and fragment:
            node["$ref"] = "#" + fragment  # the bundle's own (a spec naming itself by URL)
            return
        section = _section(split_pointer(fragment), split_pointer(pointer))
        if section is None:  # a path item: copied in place (3.0 has no components for it)
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            node.clear()
            node.update(copy.deepcopy(target), **siblings)
            self.provenance.add(pointer, source, fragment)
            self._within(node, pointer, source)
            return
        key = (id(source), fragment)
        if key not in self.done:
            self.done[key] = self._import(target, section, source, fragment)
        node["$ref"] = self.done[key]

    def _import(self, target: Any, section: str, source: SourceFile, fragment: str) -> str:
        entries = self.bundle.setdefault("components", {}).setdefault(section, {})
        name = _component_name(entries, fragment, source)
        entries[name] = content = _without_identity(copy.deepcopy(target))
        pointer = join_pointer("/components", section, name)
        self.provenance.add(pointer, source, fragment)
        self._within(content, pointer, source)
        return "#" + pointer

    def _within(self, content: Any, pointer: str, source: SourceFile) -> None:
        self.pending.append((content, pointer, source))

    def drain(self) -> None:
        """Resolve the references inside the copies made (a local one means the copied
        file's own), and inside the copies those make — a loop, not a recursion, however
        long a vendor's chain of references."""
        while self.pending:
            content, pointer, source = self.pending.pop()
            for inner_pointer, node in _all_refs(content, pointer):
                ref = node["$ref"]
                if ref.startswith("#"):
                    self._point(node, inner_pointer, source, unquote(ref[1:]),
                                join_pointer(inner_pointer, "$ref"))
                else:
                    self.resolve(node, inner_pointer, self.refs.base(source))


def _without_identity(content: Any) -> Any:
    """A copied document without its ``$id`` and ``$schema``: in the bundle its ``$ref``s
    are the bundle's (an ``$id`` would make tools read them against the vendor's URL),
    and OpenAPI 3.0's schemas allow neither."""
    if isinstance(content, dict):
        for key in ("$id", "$schema"):
            content.pop(key, None)
    return content


def _all_refs(node: Any, pointer: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    stack = [(node, pointer)]
    while stack:
        current, where = stack.pop()
        if isinstance(current, dict):
            if isinstance(current.get("$ref"), str):
                found.append((where, current))
            stack += [(v, join_pointer(where, k)) for k, v in current.items()
                      if isinstance(v, dict | list)]
        elif isinstance(current, list):
            stack += [(v, join_pointer(where, i)) for i, v in enumerate(current)
                      if isinstance(v, dict | list)]
    return found


def _section(fragment: list[str], place: list[str]) -> str | None:
    """The components section a reference's target belongs in: the target's own when it
    is a component, else what the ``$ref``'s place says (``None``: a path item)."""
    if len(fragment) == 3 and fragment[0] == "components":
        return fragment[1]
    if len(place) == 2 and place[0] in ("paths", "webhooks"):
        return None
    if "schema" in place or place[:2] == ["components", "schemas"]:
        return "schemas"
    if len(place) == 3 and place[0] == "components":
        return place[1]
    if place and place[-1] == "requestBody":
        return "requestBodies"
    if len(place) >= 2 and place[-2] in _SECTION_BY_PARENT:
        return _SECTION_BY_PARENT[place[-2]]
    return "schemas"


def _component_name(entries: dict[str, Any], fragment: str, source: SourceFile) -> str:
    """The target's own name (its last pointer token; a whole file's ``title``, else its
    name up to the first dot), prefixed with the file's stem when the bundle has that
    name already, numbered if need be."""
    tokens = split_pointer(fragment)
    title = source.data.get("title") if isinstance(source.data, dict) else None
    own = tokens[-1] if tokens else title if isinstance(title, str) and title else \
        source.path.name.split(".", 1)[0]
    name = _NAME.sub("_", own).strip("_") or "Ref"
    if name not in entries:
        return name
    stem = "".join(w[:1].upper() + w[1:] for w in re.findall(r"[A-Za-z0-9]+",
                                                               source.path.stem))
    candidate, suffix = f"{stem}{name}", 2
    while candidate in entries:
        candidate, suffix = f"{stem}{name}{suffix}", suffix + 1
    return candidate


def _own_id(source: SourceFile) -> str | None:
    data = source.data
    if isinstance(data, dict) and isinstance(data.get("$id"), str) and data["$id"]:
        return urldefrag(data["$id"])[0]
    return None


def _file_path(url: str) -> Path | None:
    parts = urlsplit(url)
    if parts.scheme == "file":
        return Path(url2pathname(parts.path))
    return None


def _shown(path: Path) -> Path:
    """``path`` relative to the working directory when under it, as a file given would be."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False
