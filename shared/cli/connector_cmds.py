"""``bss-sync validate``, ``preview`` and ``bundle``: working on connector documents.

Connector files on the command line:

* ``bss-sync validate a.json b.yaml`` — each file is one connector (an OpenAPI
  document with ``x-synchronization``, or an overlay whose ``extends`` names spec
  files beside it);
* ``bss-sync validate spec1.json spec2.json --overlay sync.overlay.json`` — the specs
  and the overlay together form one connector. This is the form for an overlay whose
  ``extends`` is the URL of a vendor's published spec: bss-sync never fetches a URL,
  so the downloaded files are given here.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.cli.parser import Subparsers, add_command
from shared.connector import ConnectorDocument, Problem, check_connector
from shared.connector.preview import preview_pull, preview_push
from shared.connector.source import SourceError, read_source
from shared.errors import SyncError


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
        "Show what a sample record becomes: the HTTP request (push) or the canonical "
        "record (pull), checked against its schema. Nothing is sent.",
    )
    _connector_arguments(preview)
    preview.add_argument("--object", required=True, metavar="NAME",
                         help="the x-synchronization object name (required)")
    preview.add_argument("--direction", choices=("push", "pull"), required=True,
                         help="push: a BSS record to a request; pull: an external record to "
                              "a BSS record (required)")
    preview.add_argument(
        "--record",
        required=True,
        type=Path,
        metavar="FILE",
        help="JSON file: a BSS record (push) or an external record (pull) (required)",
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
        help="a server variable or instance setting (repeatable; default: the document's)",
    )
    preview.add_argument("--server", metavar="URL",
                         help="server URL overriding the document's (default: the document's)")
    preview.add_argument(
        "--since",
        type=_datetime,
        metavar="TIME",
        help="pull: the cursor time (ISO 8601) for the list request (default: none, a "
             "full listing)",
    )
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


def _connectors(args: argparse.Namespace) -> list[tuple[list[Path], Path | None]]:
    if args.overlay is not None:
        return [(list(args.files), args.overlay)]
    return [([path], None) for path in args.files]


def _print_problems(problems: list[Problem], stream: Any) -> None:
    for problem in problems:
        print(problem.format(), file=stream)


def cmd_validate(args: argparse.Namespace) -> int:
    failed = False
    for paths, overlay in _connectors(args):
        document, problems = check_connector(paths, overlay, command=f"bss-sync {args.command}")
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
    document, problems = check_connector(paths, overlay, command=f"bss-sync {args.command}")
    if document is None:
        print("the connector is invalid:", file=sys.stderr)
        _print_problems(problems, sys.stderr)
    return document


def cmd_preview(args: argparse.Namespace) -> int:
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
            preview = preview_push(
                document,
                obj,
                record,
                args.action,
                external_id=args.external_id,
                variables=variables,
                server=args.server,
            )
        else:
            preview = preview_pull(
                document, obj, record, variables=variables, server=args.server, since=args.since
            )
    except SyncError as exc:
        print(f"bss-sync: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(preview.render())
    return 1 if preview.errors else 0


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
