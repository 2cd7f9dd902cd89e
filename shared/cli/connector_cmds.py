"""``bss-sync validate``, ``preview`` and ``bundle``: working on connector documents.

Connector files on the command line:

* ``bss-sync validate a.json b.yaml`` — each file is one connector (an OpenAPI
  document with ``x-synchronization``, or an overlay whose ``extends`` names spec
  files beside it);
* ``bss-sync validate spec1.json spec2.json --overlay sync.overlay.json`` — the specs
  and the overlay together form one connector. This is the form for an overlay whose
  ``extends`` is the URL of a vendor's published spec: bss-sync never fetches a URL,
  so the downloaded files are given here.

Either way a file another one's ``$ref`` reaches is a referenced document, not a
connector of its own (nor a spec, unless it has ``paths``); ``--ref URL=FILE`` maps a
URL a ``$ref`` (or the overlay's ``extends``) names to its file.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.cli.parser import Subparsers, add_command
from shared.connector import ConnectorDocument, Problem, check_connector, paging
from shared.connector.document import SyncObject
from shared.connector.loader import referenced_files
from shared.connector.preview import ListingStart, Preview, preview_pull, preview_push
from shared.connector.source import SourceError, read_source
from shared.errors import ConfigurationError, InfrastructureError, SyncError
from shared.logging import redact
from shared.schemas import ENTITIES

if TYPE_CHECKING:
    from shared.storage.instances import Instance


def register(sub: Subparsers) -> None:
    """Add validate, preview and bundle."""
    validate = add_command(
        sub, "validate", "check connector documents; list every problem",
        "Check connector documents. Exit 0 with one summary line per connector on "
        "stdout, or 1 listing every problem (file:line: JSON pointer: sentence) on stderr.",
    )
    _connector_arguments(validate)
    validate.set_defaults(func=cmd_validate)

    preview = add_command(
        sub, "preview", "show the HTTP request a record becomes",
        "Show what a sample record becomes: the HTTP request (push), or the listing "
        "request pull discovery sends first and the canonical record a sample external "
        "record becomes (pull), checked against their schemas. Nothing is sent.",
    )
    _connector_arguments(preview)
    preview.add_argument("--object", required=True, metavar="NAME",
                         help="the x-synchronization object name (required)")
    preview.add_argument("--direction", choices=("push", "pull"), required=True,
                         help="push: a BSS record to a request; pull: the listing request, "
                              "and an external record to a BSS record (required)")
    preview.add_argument(
        "--record",
        type=Path,
        metavar="FILE",
        help="JSON file: a BSS record (push, required) or an external record (pull; "
             "default: none, only the listing request is shown)",
    )
    preview.add_argument("--action", choices=("create", "update", "delete"), default="create",
                         help="push: which request to show (default: %(default)s)")
    preview.add_argument(
        "--external-id",
        default="EXT-1",
        metavar="ID",
        help="external id for update/delete previews (default: %(default)s)",
    )
    preview.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server variable or instance setting (repeatable; default: the document's, "
             "or the --instance's)",
    )
    preview.add_argument(
        "--link",
        action="append",
        default=[],
        type=_link,
        metavar="ENTITY:BSS_ID=EXTERNAL_ID",
        help="a linked record's ids, used by $externalId/$bssId instead of a placeholder "
             "and checked like any value (repeatable; default: placeholders, which the "
             "schema checks only note)",
    )
    preview.add_argument("--server", metavar="URL",
                         help="server URL overriding the document's (default: the "
                              "document's, or the --instance's)")
    start = preview.add_mutually_exclusive_group()
    start.add_argument(
        "--cursor",
        type=_datetime,
        metavar="TIME",
        help="pull: a stored cursor (ISO 8601); the listing starts "
             f"{int(paging.OVERLAP.total_seconds())} s before it, as discovery does "
             "(default: no cursor, every record)",
    )
    start.add_argument(
        "--since",
        type=_datetime,
        metavar="TIME",
        help="pull: the time the listing asks for changes since, exactly (ISO 8601; "
             "default: none)",
    )
    start.add_argument(
        "--instance",
        metavar="ID",
        help="pull: the instance whose stored cursors (or stopped listing), server and "
             "variables to use; reads PostgreSQL (DATABASE_URL) (default: none)",
    )
    preview.add_argument("--full", action="store_true",
                         help="pull: a full listing, ignoring any cursor, as `bss-sync pull "
                              "--full` (default: off)")
    preview.set_defaults(func=cmd_preview)

    bundle = add_command(
        sub, "bundle", "write the combined document (specs + overlay)",
        "Write the connector as one OpenAPI document, for standard tools (Prism, "
        "Swagger UI, generators).",
    )
    _connector_arguments(bundle)
    bundle.add_argument("-o", "--output", type=Path, metavar="FILE",
                        help="file to write (default: stdout)")
    bundle.add_argument(
        "--json-media-types",
        action="store_true",
        help="rewrite */* media types to application/json (Prism needs this; default: off)",
    )
    bundle.set_defaults(func=cmd_bundle)


def _datetime(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date-time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _connector_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="connector document(s): OpenAPI JSON/YAML, or an overlay; with --overlay, "
             "the specs it applies to",
    )
    parser.add_argument(
        "--overlay", type=Path, metavar="FILE",
        help="Overlay 1.0 file adding x-synchronization to the FILEs (default: none; each "
             "FILE is a connector)",
    )
    parser.add_argument(
        "--ref", action="append", default=[], type=_ref_mapping, metavar="URL=FILE",
        help="the file a $ref to URL (another document, or the overlay's extends) "
             "resolves to; never fetched (repeatable; default: a FILE given whose $id or "
             "file name is the URL's, or a file beside the spec)",
    )
    parser.add_argument(
        "--strict", action="store_true",
        help="every problem is an error, warnings included (default: OpenAPI defects in "
             "parts of a spec the connector does not reach are warnings)",
    )


def _link(text: str) -> tuple[tuple[str, str], str]:
    entity, colon, rest = text.partition(":")
    bss_id, equals, external_id = rest.partition("=")
    if not colon or not equals or not entity or not bss_id or not external_id:
        raise argparse.ArgumentTypeError(
            f"expected ENTITY:BSS_ID=EXTERNAL_ID (account:acc_1=4711), got {text!r}")
    if entity not in ENTITIES:
        raise argparse.ArgumentTypeError(
            f"unknown entity {entity!r} (one of {', '.join(sorted(ENTITIES))})")
    return (entity, bss_id), external_id


def _ref_mapping(text: str) -> tuple[str, Path]:
    url, equals, file = text.rpartition("=")
    if not equals or not url or not file:
        raise argparse.ArgumentTypeError(f"expected URL=FILE, got {text!r}")
    return url, Path(file)


def _connectors(args: argparse.Namespace) -> list[tuple[list[Path], Path | None]]:
    """The connectors the FILEs make: one with --overlay; else one per FILE, except the
    FILEs another's ``$ref``s reach (given for them, not connectors of their own)."""
    if args.overlay is not None:
        return [(list(args.files), args.overlay)]
    referenced = referenced_files(args.files, dict(args.ref)) if len(args.files) > 1 else set()
    return [([path], None) for path in args.files if path not in referenced] or \
        [([path], None) for path in args.files]


def _check(args: argparse.Namespace, paths: list[Path],
           overlay: Path | None) -> tuple[ConnectorDocument | None, list[Problem]]:
    return check_connector(paths, overlay, command=f"bss-sync {args.command}",
                           strict=args.strict, refs=dict(args.ref),
                           ref_files=[f for f in args.files if f not in paths])


def _print_problems(problems: list[Problem], stream: Any) -> None:
    for problem in problems:
        print(problem.format(), file=stream)


def cmd_validate(args: argparse.Namespace) -> int:
    failed = False
    for paths, overlay in _connectors(args):
        document, problems = _check(args, paths, overlay)
        name = " + ".join(str(p) for p in [*paths, *([overlay] if overlay else [])])
        if document is None:
            failed = True
            errors = [p for p in problems if p.severity == "error"]
            print(f"{name}: INVALID — {len(errors)} problem(s):", file=sys.stderr)
            _print_problems(problems, sys.stderr)
        else:
            print(f"{name}: OK — {document.summary()}")
            _print_problems(problems, sys.stderr)  # warnings
    return 1 if failed else 0


def _load_one(args: argparse.Namespace) -> ConnectorDocument | None:
    paths, overlay = (list(args.files), args.overlay)
    document, problems = _check(args, paths, overlay)
    if document is None:
        print("the connector is invalid:", file=sys.stderr)
        _print_problems(problems, sys.stderr)
    return document


def cmd_preview(args: argparse.Namespace) -> int:
    if args.direction == "push" and args.record is None:
        print("bss-sync: preview --direction push needs --record FILE (a BSS record)",
              file=sys.stderr)
        return 2
    if args.direction == "push" and (args.full or args.cursor or args.since or args.instance):
        print("bss-sync: --full, --cursor, --since and --instance are for --direction pull",
              file=sys.stderr)
        return 2
    if args.full and (args.cursor or args.since):
        print("bss-sync: --full lists every record: it takes no --cursor or --since",
              file=sys.stderr)
        return 2
    document = _load_one(args)
    if document is None:
        return 1
    if args.object not in document.objects:
        print(
            f"bss-sync: no object {args.object!r} in the connector; objects: "
            f"{', '.join(document.objects)}",
            file=sys.stderr,
        )
        return 1
    record = None
    if args.record is not None:
        try:
            record = read_source(args.record).data
        except SourceError as exc:
            print(f"bss-sync: {exc.problem.format()}", file=sys.stderr)
            return 1
        if not isinstance(record, dict):
            print(f"bss-sync: {args.record}: the record must be a JSON object", file=sys.stderr)
            return 1
    variables = {}
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep:
            print(f"bss-sync: --var {item!r}: expected NAME=VALUE", file=sys.stderr)
            return 2
        variables[name] = value
    obj = document.objects[args.object]
    try:
        if args.direction == "push":
            assert record is not None
            preview = preview_push(
                document,
                obj,
                record,
                args.action,
                external_id=args.external_id,
                variables=variables,
                server=args.server,
                links=dict(args.link),
            )
        else:
            preview = _preview_pull(args, document, obj, record, variables)
    except (SyncError, InfrastructureError) as exc:
        print(f"bss-sync: {redact(str(exc))}", file=sys.stderr)
        return 1
    sys.stdout.write(preview.render())
    return 1 if preview.errors else 0


def _preview_pull(args: argparse.Namespace, document: ConnectorDocument, obj: SyncObject,
                  record: dict[str, Any] | None, variables: dict[str, Any]) -> Preview:
    """The pull preview, from the command line's start or the instance's stored one."""
    server = args.server
    if args.instance is None:
        start = ListingStart(cursor=args.cursor, since=args.since, full=args.full)
        return preview_pull(document, obj, record, variables=variables, server=server,
                            start=start, links=dict(args.link))
    stored = asyncio.run(stored_listing(args.instance, obj))
    notes = [f"instance {stored.instance.id}: the cursors stored in PostgreSQL"]
    if stored.instance.connector_sha256 != document.sha256:
        notes.append(f"instance {stored.instance.id} runs another version of the connector "
                     f"(sha256 {stored.instance.connector_sha256[:12]}, these files "
                     f"{document.sha256[:12]})")
    full = ListingStart(full=True)
    preview = preview_pull(
        document, obj, record, variables={**stored.instance.variables, **variables},
        server=server or stored.instance.server_url,
        start=full if args.full else stored.list_start,
        deleted_start=full if args.full else stored.deleted_start, links=dict(args.link))
    preview.notes[:0] = notes
    return preview


@dataclasses.dataclass(frozen=True)
class StoredListing:
    instance: Instance
    list_start: ListingStart
    deleted_start: ListingStart


async def stored_listing(instance_id: str, obj: SyncObject) -> StoredListing:
    """Where discovery would start ``obj``'s listings for the instance (its stored
    cursors, or where a stopped listing starts again: ``paging.restart``). Raises
    ``ConfigurationError`` (no such instance) and ``InfrastructureError``."""
    from shared.settings import get_settings  # PostgreSQL only when --instance asks for it
    from shared.storage.db import Database
    from shared.storage.instances import InstanceStore
    from shared.storage.pull_cursors import PullCursorStore

    db = Database.from_settings(get_settings(), min_size=1, max_size=1)
    await db.open()
    try:
        instance = await InstanceStore(db).get(instance_id)
        if instance is None:
            raise ConfigurationError(f"no instance {instance_id!r} (see `bss-sync instances "
                                     "list`)")
        cursors = PullCursorStore(db)
        starts = []
        for name, call in ((obj.name, obj.pull_list),
                           (obj.name + paging.DELETED_CURSOR_SUFFIX, obj.pull_deleted_list)):
            cursor = await cursors.get(instance_id, name)
            if cursor.resume is not None and call is not None:
                since, page = paging.restart(call, cursor.resume, cursor.listing_since,
                                             cursor.listing_high)
                starts.append(ListingStart(since=since, resume=page))
            else:
                starts.append(ListingStart(cursor=cursor.value))
        return StoredListing(instance, *starts)
    finally:
        await db.close()


def cmd_bundle(args: argparse.Namespace) -> int:
    document = _load_one(args)
    if document is None:
        return 1
    bundle = document.document
    if args.json_media_types:
        bundle = _json_media_types(bundle)
    text = json.dumps(bundle, indent=2, ensure_ascii=False) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output} ({len(text)} bytes, sha256 {document.sha256[:12]})")
    return 0


def _json_media_types(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "content" and isinstance(value, dict) and "*/*" in value:
                value = {("application/json" if k == "*/*" else k): v for k, v in value.items()}
            out[key] = _json_media_types(value)
        return out
    if isinstance(node, list):
        return [_json_media_types(v) for v in node]
    return node
