"""Loading a connector: files → bundle → checks → ``ConnectorDocument``.

A connector is one or more OpenAPI documents (JSON or YAML) plus, optionally, an
Overlay 1.0 document adding ``x-synchronization`` to them. Every problem found on
the way is reported with the file, line and JSON pointer where it was written.

Only files are read, never a URL: an overlay whose ``extends`` is the URL of a
vendor's published spec is given the downloaded files with it (``--overlay`` on the
command line, ``spec`` + ``overlay`` in an installation file), or matched to one by
``--ref URL=FILE``; ``$ref``s to other documents likewise (``external_refs``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urldefrag, urlsplit
from urllib.request import url2pathname

from jsonschema import Draft202012Validator

from shared.connector.bundle import Provenance, merge_documents
from shared.connector.document import ConnectorDocument
from shared.connector.external_refs import RefFiles, cli_hint, internalize, referenced_sources
from shared.connector.object_compiler import compile_sync
from shared.connector.openapi import index_operations
from shared.connector.openapi_validity import openapi_problems, version_problem
from shared.connector.overlay import apply_overlay, check_overlay, is_overlay
from shared.connector.problems import DocumentInvalid, Problem
from shared.connector.reach import reached
from shared.connector.source import SourceError, SourceFile, read_source
from shared.connector.transform_compiler import malformed_target_wording
from shared.schema_errors import located_sentences
from shared.schemas import load_schema, registry, schema_uri


def load_connector(
    paths: Sequence[str | Path] | str | Path,
    overlay: str | Path | None = None,
    *,
    refs: Mapping[str, str | Path] | None = None,
    hint: Callable[[str], str] = cli_hint,
) -> ConnectorDocument:
    """Load and check a connector. Raises ``DocumentInvalid`` listing every problem."""
    document, problems = check_connector(paths, overlay, refs=refs, hint=hint)
    if document is None:
        raise DocumentInvalid(problems)
    return document


def check_connector(
    paths: Sequence[str | Path] | str | Path,
    overlay: str | Path | None = None,
    *,
    command: str = "bss-sync validate",
    strict: bool = False,
    refs: Mapping[str, str | Path] | None = None,
    ref_files: Sequence[str | Path] = (),
    hint: Callable[[str], str] = cli_hint,
) -> tuple[ConnectorDocument | None, list[Problem]]:
    """Load a connector; returns it (``None`` when there are errors) and all problems,
    warnings included, each located in its source file. ``command`` is the command line
    a problem quotes when an overlay given alone extends URLs or missing files.

    OpenAPI defects outside what the connector reaches are warnings (``reach``);
    ``strict`` makes every problem, warnings included, an error.

    References to other documents (``external_refs``) resolve to ``refs`` (URL → file),
    then to the files given — ``paths`` and ``ref_files``; a file in ``paths`` that
    another's ``$ref`` reaches is a referenced document, not a spec (unless it is an
    OpenAPI document with paths of its own). ``hint(url)`` is how
    a problem says to map a URL to a file (``--ref URL=FILE`` by default)."""
    if isinstance(paths, str | Path):
        paths = [paths]
    problems: list[Problem] = []
    sources = _read_all([Path(p) for p in paths], problems)
    references = _read_all([Path(p) for p in ref_files], problems)
    explicit = _read_refs(refs or {}, problems)
    ref_catalog = RefFiles([*sources, *references, *explicit.values()], explicit, hint)
    overlay_source = _read_all([Path(overlay)], problems)[0] if overlay else None
    if overlay_source is None and len(sources) == 1 and is_overlay(sources[0].data):
        overlay_source = sources.pop()
        sources = _extended_sources(overlay_source, problems, command, ref_catalog)
    referenced = referenced_sources(sources, ref_catalog)
    sources = [s for i, s in enumerate(sources) if i not in referenced or _has_paths(s)]
    if overlay_source is not None:
        problems += [_in_file(p, overlay_source) for p in check_overlay(overlay_source.data)]
        sources = _extends_first(overlay_source, sources, ref_catalog)
    if problems or not sources:
        if not sources and not problems:
            problems.append(Problem("", "no OpenAPI document given"))
        return None, problems

    bundle, merge_problems, provenance = merge_documents(sources)
    problems += merge_problems
    if not isinstance(bundle, dict):
        return None, [
            *problems,
            _in_file(Problem("", "is not an OpenAPI document (not an object)"), sources[0]),
        ]
    # before the overlay, so that it may target what references reach; after, for its own
    origins = [*sources, *([overlay_source] if overlay_source is not None else [])]
    unresolved = internalize(bundle, provenance, ref_catalog, origins)
    if overlay_source is not None:
        bundle, overlay_problems, applied = apply_overlay(bundle, overlay_source.data)
        problems += [_in_file(p, overlay_source) for p in overlay_problems]
        for doc_pointer, overlay_pointer in applied:
            provenance.add(doc_pointer, overlay_source, overlay_pointer)
        unresolved += [p for p in internalize(bundle, provenance, ref_catalog, origins)
                       if p not in unresolved]

    found = _sync_problems(bundle)
    # Compile even when there are problems already: the compiler copes with any shape,
    # and the author wants every problem at once.
    compiled, compile_problems = _compile(bundle)
    found = list(dict.fromkeys(found + compile_problems))  # both may say it (map targets)
    found += _openapi_problems(bundle, compiled["objects"], unresolved)
    problems += [_locate(p, provenance) for p in found]
    if strict:
        problems = [dataclasses.replace(p, severity="error") for p in problems]
    problems.sort(key=lambda p: (p.file or "", p.line or 0))
    if any(p.severity == "error" for p in problems):
        return None, problems
    return _document(bundle, compiled, sources, overlay_source, problems), problems


def referenced_files(paths: Sequence[str | Path],
                     refs: Mapping[str, str | Path] | None = None) -> set[Path]:
    """Which of ``paths`` another one's ``$ref``s reach (directly or through
    ``refs``): referenced documents, not connectors of their own. A file that cannot be
    read is left for the load to report."""
    sources = _read_all([Path(p) for p in paths], [])
    explicit = _read_refs(refs or {}, [])
    catalog = RefFiles([*sources, *explicit.values()], explicit)
    return {sources[i].path for i in referenced_sources(sources, catalog)}


def _openapi_problems(bundle: dict[str, Any], objects: dict[str, Any],
                      unresolved: list[Problem]) -> list[Problem]:
    """The document's problems as OpenAPI, the references to other documents left
    ``unresolved`` among them: errors in what the connector reaches (its operations, what their
    ``$ref``s lead to, servers, security), warnings elsewhere — a vendor's defect in an
    operation the connector never calls cannot break it."""
    wrong_version = version_problem(bundle)
    if wrong_version is not None:
        return [wrong_version]
    reach = reached(bundle, objects)
    return [p if reach.covers(p.pointer) else dataclasses.replace(p, severity="warning")
                    for p in [*unresolved, *openapi_problems(bundle)]]


def document_from_bundle(
    bundle: dict[str, Any], *, title: str | None = None, version: str | None = None
) -> ConnectorDocument:
    """A connector from a bundle already checked when it was applied (as stored in the
    database): compiled again, without re-reading files. Raises ``DocumentInvalid``."""
    compiled, problems = _compile(bundle)
    problems = list(dict.fromkeys(_sync_problems(bundle) + problems))
    if any(p.severity == "error" for p in problems):
        raise DocumentInvalid(problems)
    info = bundle.get("info") if isinstance(bundle.get("info"), dict) else {}
    return _assemble(
        bundle,
        compiled,
        title or str(info.get("title") or "connector"),
        version or str(info.get("version") or ""),
        (),
        problems,
    )


def _read_all(paths: list[Path], problems: list[Problem]) -> list[SourceFile]:
    sources = []
    for path in paths:
        try:
            sources.append(read_source(path))
        except SourceError as exc:
            problems.append(exc.problem)
    return sources


def _extended_sources(overlay: SourceFile, problems: list[Problem], command: str,
                      refs: RefFiles) -> list[SourceFile]:
    """The documents an overlay given alone applies to: ``extends`` (Overlay 1.0), plus
    ``x-extends`` (a list, for connectors made of several vendor specs), each a path
    relative to the overlay, a ``file:`` URL, or a URL matched to a file given
    (``--ref URL=FILE``, a file whose ``$id`` or file name is the URL's).

    bss-sync never fetches a URL: when a target is one no file given matches, or is not a
    file here, the result is empty and ``problems`` gets one sentence, at the first such
    target, saying how to give the files on the command line."""
    targets = _extends_targets(overlay.data)
    if not targets:
        problems.append(
            _in_file(
                Problem(
                    "/extends",
                    "this overlay names no document to apply "
                    "to: give the OpenAPI file(s) before --overlay, or set "
                    "'extends'",
                ),
                overlay,
            )
        )
        return []
    base = overlay.path.parent
    local = {pointer: _local_path(base, target) for pointer, target in targets}
    found: dict[str, SourceFile] = {}
    for pointer, target in targets:
        if local[pointer] is None and isinstance(match := refs.find(target, target), SourceFile):
            found[pointer] = match
    unreadable = [(pointer, target) for pointer, target in targets
                  if pointer not in found and not _is_file(local[pointer])]
    if unreadable:
        problems.append(
            _in_file(_not_local(overlay, targets, local, unreadable, command, refs), overlay)
        )
        return []
    sources = []
    for pointer, _ in targets:
        path = local[pointer]
        sources += [found[pointer]] if pointer in found else _read_all(
            [path] if path is not None else [], problems)
    return sources


def _extends_first(overlay: SourceFile, sources: list[SourceFile],
                   refs: RefFiles) -> list[SourceFile]:
    """The specs given with an overlay, the one its ``extends`` names first (its info,
    servers and security lead), then its ``x-extends`` in order, then the others as given.
    A URL target is matched to a given file as a reference is (``RefFiles``); one that
    matches none leaves the files in the order given (downloads are often renamed)."""
    ordered: list[SourceFile] = []
    for _, target in _extends_targets(overlay.data):
        local = _local_path(overlay.path.parent, target)
        match = next((s for s in sources if local is not None and _same(s.path, local)), None)
        if match is None:
            found = refs.find(target, target)
            match = found if isinstance(found, SourceFile) and found in sources else None
        if match is None:
            return sources
        if match not in ordered:
            ordered.append(match)
    return ordered + [s for s in sources if s not in ordered]


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _has_paths(source: SourceFile) -> bool:
    """An OpenAPI document with operations: a spec even when another references it."""
    data = source.data
    return isinstance(data, dict) and "openapi" in data and bool(data.get("paths"))


def _read_refs(refs: Mapping[str, str | Path], problems: list[Problem]) -> dict[str, SourceFile]:
    """``URL → file`` read: each file once, however many URLs map to it."""
    read: dict[Path, SourceFile] = {}
    explicit: dict[str, SourceFile] = {}
    for url, file in refs.items():
        path = Path(file)
        if path not in read:
            got = _read_all([path], problems)
            if not got:
                continue
            read[path] = got[0]
        explicit[urldefrag(url)[0]] = read[path]
    return explicit


def _extends_targets(data: dict[str, Any]) -> list[tuple[str, str]]:
    """``(pointer, target)`` of ``extends`` and every ``x-extends`` item, in order."""
    targets: list[tuple[str, str]] = []
    if isinstance(data.get("extends"), str) and data["extends"]:
        targets.append(("/extends", data["extends"]))
    extra = data.get("x-extends")
    for index, target in enumerate(extra if isinstance(extra, list) else []):
        if isinstance(target, str) and target and target not in (t for _, t in targets):
            targets.append((f"/x-extends/{index}", target))
    return targets


def _local_path(base: Path, target: str) -> Path | None:
    """Where ``target`` is on this machine, or ``None`` for a URL bss-sync would have to
    fetch (any scheme but ``file:``; a one-letter scheme is a Windows drive)."""
    parts = urlsplit(target)
    if parts.scheme == "file":
        return base / url2pathname(parts.path)
    if len(parts.scheme) > 1:
        return None
    return base / target


def _is_file(path: Path | None) -> bool:
    return path is not None and path.is_file()


def _not_local(
    overlay: SourceFile,
    targets: list[tuple[str, str]],
    local: dict[str, Path | None],
    unreadable: list[tuple[str, str]],
    command: str,
    refs: RefFiles,
) -> Problem:
    """One sentence for an overlay whose specs are URLs or missing files: what is wrong
    and the command that gives them, e.g. ``bss-sync validate companies.json
    contacts.json --overlay connectors/hubspot-crm.overlay.json``."""
    urls = [target for pointer, target in unreadable if local[pointer] is None]
    missing = [str(local[pointer]) for pointer, _ in unreadable if local[pointer] is not None]
    files: list[str] = []
    for pointer, target in targets:
        path = local[pointer]
        name = PurePosixPath(urlsplit(target).path).name or "spec.json"
        if _is_file(path):
            files.append(str(path))
        else:
            files.append(name if name not in files else f"{len(files) + 1}-{name}")
    what = []
    if urls:
        what.append(f"bss-sync does not fetch {_and(urls)}")
    if missing:
        what.append(f"{_and(missing)} {'is' if len(missing) == 1 else 'are'} not a file")
    how = f"download {'it' if len(unreadable) == 1 else 'them'} and " if urls else ""
    example = f"{command} {' '.join(files)} --overlay {overlay.path}"
    mapping = f"; or map {'it' if len(urls) == 1 else 'each'} to its file with " \
        f"{refs.hint('URL')}" if urls else ""
    return Problem(
        unreadable[0][0],
        f"{', and '.join(what)}: {how}give the files before --overlay ({example}){mapping}",
    )


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _sync_problems(bundle: dict[str, Any]) -> list[Problem]:
    sync = bundle.get("x-synchronization")
    if sync is None:
        return [
            Problem(
                "",
                "no x-synchronization block: add one to the document, or give an "
                "overlay that adds it (--overlay)",
            )
        ]
    validator = _meta_validator()
    found = located_sentences(validator.iter_errors(sync), base_pointer="/x-synchronization",
                              root=load_schema("connector"), wording=malformed_target_wording)
    return [Problem(pointer, sentence) for pointer, sentence in found]


@cache
def _meta_validator() -> Draft202012Validator:
    return Draft202012Validator(load_schema("connector"), registry=registry())


def _compile(bundle: dict[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    operations = index_operations(bundle)
    compiled = compile_sync(bundle, operations, inlined_entity_schema)
    return {
        "operations": operations,
        "objects": compiled.objects,
        "transforms": compiled.transforms,
        "lookups": compiled.lookups,
    }, compiled.problems


def _document(
    bundle: dict[str, Any],
    compiled: dict[str, Any],
    sources: list[SourceFile],
    overlay: SourceFile | None,
    problems: list[Problem],
) -> ConnectorDocument:
    info = bundle.get("info") or {}
    overlay_info = (overlay.data.get("info") or {}) if overlay is not None else {}
    title = str(overlay_info.get("title") or info.get("title") or sources[0].path.stem)
    version = str(overlay_info.get("version") or info.get("version") or "")
    files = tuple(str(s.path) for s in sources) + ((str(overlay.path),) if overlay else ())
    return _assemble(bundle, compiled, title, version, files, problems)


def _assemble(
    bundle: dict[str, Any],
    compiled: dict[str, Any],
    title: str,
    version: str,
    files: tuple[str, ...],
    problems: list[Problem],
) -> ConnectorDocument:
    sync = bundle.get("x-synchronization") or {}
    return ConnectorDocument(
        document=bundle,
        sha256=document_sha256(bundle),
        title=title,
        version=version,
        sources=files,
        operations=compiled["operations"],
        objects=compiled["objects"],
        transforms=compiled["transforms"],
        lookups=compiled["lookups"],
        dependencies={k: tuple(v) for k, v in (sync.get("dependencies") or {}).items()},
        settings={
            k: sync[k] for k in ("rateLimit", "idempotency", "timeouts", "variables") if k in sync
        },
        warnings=tuple(p for p in problems if p.severity == "warning"),
    )


def document_sha256(bundle: dict[str, Any]) -> str:
    """Content hash of a bundle, independent of key order and formatting."""
    canonical = json.dumps(bundle, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _in_file(problem: Problem, source: SourceFile) -> Problem:
    return problem.located(str(source.path), source.line_of(problem.pointer))


def _locate(problem: Problem, provenance: Provenance) -> Problem:
    if problem.file is not None:
        return problem
    file, line, pointer = provenance.locate(problem.pointer)
    return problem.located(file, line, pointer)


@cache
def inlined_entity_schema(entity: str) -> dict[str, Any]:
    """The canonical entity schema with every ``$ref`` replaced by its target."""
    uri = schema_uri(f"entities/{entity}")
    resolver = registry().resolver(base_uri=uri)
    resolved = resolver.lookup(uri)
    return _inline(resolved.contents, resolved.resolver, 0)


def _inline(node: Any, resolver: Any, depth: int) -> Any:
    if depth > 40:
        return True
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            resolved = resolver.lookup(node["$ref"])
            target = _inline(resolved.contents, resolved.resolver, depth + 1)
            siblings = {k: _inline(v, resolver, depth + 1) for k, v in node.items() if k != "$ref"}
            return {**target, **siblings} if isinstance(target, dict) else target
        return {k: _inline(v, resolver, depth + 1) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, resolver, depth + 1) for v in node]
    return node
