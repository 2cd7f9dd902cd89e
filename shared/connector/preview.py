"""``bss-sync preview``: what a record becomes on the wire, without sending anything.

Push: the HTTP request(s) the pusher would send for a BSS record — method, full
URL with server variables, headers with credentials masked, body — and the body
checked against the operation's request schema. Pull: the listing request pull
discovery would send first (``pull.list``, and ``pull.deletedList`` when declared),
built by the code discovery uses (``paging.list_request``), from a first run, a
cursor (minus the overlap), a given start, a stopped listing's next page or
``--full``; and, given a sample external record, the canonical record it becomes,
checked against ``schemas/``. Links to other records are shown as placeholders.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from shared.connector import paging, security
from shared.connector.document import CallSpec, ConnectorDocument, SyncObject
from shared.connector.idempotency import idempotency_key
from shared.connector.payloads import PayloadChecker, entity_violations
from shared.connector.request import RequestPlan, plan_request, server_url
from shared.errors import SchemaViolation, SyncError
from shared.json_pointer import join_pointer
from shared.transform import UNDEFINED, ExpressionRuntimeError, TransformContext
from shared.transform.expressions import path_names

Link = tuple[str, str]
"""``(entity, BSS id)`` of a linked record, as ``--link entity:bssId=externalId`` names it."""


class PlaceholderLinks:
    """Link lookups for previews: a link given (``--link``) is used as it is, both ways;
    any other linked id is shown as a readable placeholder, remembered (``shown``) so that
    the schema checks can tell it from a value the record produced — a real id of the
    vendor's shape would pass where ``<account acc_1 in the third party>`` does not."""

    def __init__(self, given: Mapping[Link, str] | None = None) -> None:
        self.given = dict(given or {})
        self.shown: dict[str, str] = {}  # placeholder → the --link that gives the real id

    def external_id(self, entity: str, bss_id: str) -> str:
        if (entity, bss_id) in self.given:
            return self.given[(entity, bss_id)]
        return self._placeholder(f"<{entity} {bss_id} in the third party>",
                                 f"{entity}:{bss_id}=EXTERNAL_ID")

    def bss_id(self, entity: str, external_id: str) -> str:
        for (linked, bss_id), external in self.given.items():
            if linked == entity and external == external_id:
                return bss_id
        return self._placeholder(f"<{entity} {external_id} in the BSS>",
                                 f"{entity}:BSS_ID={external_id}")

    def _placeholder(self, text: str, link: str) -> str:
        self.shown[text] = link
        return text

    def waived(self, value: Any, violations: list[tuple[str, str]]
               ) -> tuple[list[tuple[str, str]], list[str]]:
        """The ``violations`` of ``value`` not at a placeholder, and a note for each at one
        (a placeholder is no id: what the schema says of it says nothing of the real one)."""
        held = dict(_placeholders_in(value, "", self.shown))
        kept, refused = [], {}
        for pointer, message in violations:
            at = next((p for p in held if pointer == p or pointer.startswith(p + "/")), None)
            if at is None:
                kept.append((pointer, message))
            else:
                refused.setdefault(at, []).append(message)
        return kept, [f"{at or '/'} holds a placeholder the schema refuses "
                      f"({'; '.join(messages)}): not checked; give the real id with "
                      f"--link {held[at]}" for at, messages in refused.items()]


def _placeholders_in(value: Any, pointer: str, shown: Mapping[str, str]
                     ) -> list[tuple[str, str]]:
    """``(pointer, link)`` of each string of ``value`` holding a placeholder of ``shown``."""
    if isinstance(value, str):
        return [(pointer, link) for text, link in shown.items() if text in value][:1]
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return []
    return [found for key, item in items
            for found in _placeholders_in(item, join_pointer(pointer, key), shown)]


@dataclasses.dataclass
class Preview:
    """The preview's sections (title, text) and the problems found."""

    sections: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    requests: list[RequestPlan] = dataclasses.field(default_factory=list)  # credentials masked
    record: dict[str, Any] | None = None  # pull: the canonical record
    errors: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def render(self) -> str:
        out = []
        for title, text in self.sections:
            out.append(f"── {title} ──")
            out.append(text)
            out.append("")
        for note in self.notes:
            out.append(f"note: {note}")
        for error in self.errors:
            out.append(f"✗ {error}")
        return "\n".join(out).rstrip() + "\n"


def preview_push(
    doc: ConnectorDocument,
    obj: SyncObject,
    record: dict[str, Any],
    action: str,
    *,
    external_id: str = "EXT-1",
    variables: Mapping[str, Any] | None = None,
    server: str | None = None,
    links: Mapping[Link, str] | None = None,
) -> Preview:
    """Preview pushing ``record`` with ``action`` (create, update or delete); ``links``:
    the external ids of linked records (``--link``), placeholders otherwise."""
    preview = Preview()
    call = obj.push.get(action)
    if call is None:
        preview.errors.append(f"object {obj.name} has no push.{action}")
        return preview
    context = _context(doc, variables, links)
    base = server_url(doc, variables, server)
    data = {"record": record, "externalId": external_id, "before": _before_placeholders(call)}
    checker = PayloadChecker(doc)
    if action == "create" and "match" in obj.push:
        match = obj.push["match"]
        if match.when is not None and not match.when.evaluate(record):
            preview.notes.append("match is skipped for this record (its 'when' is false)")
        else:
            _section(
                preview,
                doc,
                checker,
                "first, look for an existing record (match)",
                match,
                base,
                {"record": record},
                context,
                record,
            )
    if call.before is not None:
        _section(
            preview, doc, checker, f"before the {action}", call.before, base, data, context, None
        )
    extra = {}
    idempotency = doc.settings.get("idempotency") or {}
    if action in idempotency.get("actions", ["create"]) and idempotency.get("header"):
        extra[idempotency["header"]] = idempotency_key("<instance>", obj.entity, "<record>", action)
    if call.steps:
        _steps(preview, doc, checker, f"push {action}: {obj.name} ({obj.entity})", call,
               base, data, context, record, extra)
    else:
        _section(
            preview,
            doc,
            checker,
            f"push {action}: {obj.name} ({obj.entity})",
            call,
            base,
            data,
            context,
            record,
            extra,
        )
    preview.notes.append("linked records are shown as <placeholders> (--link "
                         "entity:bssId=externalId for real ones); credentials as ***")
    return preview


def _steps(preview: Preview, doc: ConnectorDocument, checker: PayloadChecker, title: str,
           call: CallSpec, base: str, data: dict[str, Any], context: TransformContext,
           record: dict[str, Any], extra: dict[str, str]) -> None:
    """One section per step of ``call``, in order: what earlier steps answer (captures, a
    create's id) shown as ``<placeholders>``; a step whose ``when`` reads only the record
    and is false is left out with a note, one whose ``when`` reads earlier answers is
    shown, titled with its condition. The idempotency header (``extra``) goes on a
    create's id step, each other step getting a key of its own, as the pusher sends."""
    data = {**data, "steps": {}}
    if call.id_step is not None:
        data.pop("externalId", None)
    count = len(call.steps)
    for number, step in enumerate(call.steps, start=1):
        heading = f"{title}, step {number} of {count}: {step.name}"
        if step.when is not None:
            if any(path[0] == "steps" for path in path_names(step.when)):
                heading += f" (only when {step.when.source})"
            elif not _runs(step, data, preview):
                preview.notes.append(f"{title}: step {number} of {count} ({step.name}) is "
                                     "skipped: its when is not true for this record")
                continue
        headers = extra if step is call.id_step else {
            name: idempotency_key(key, step.name) for name, key in extra.items()}
        _section(preview, doc, checker, heading, step, base, data, context, record, headers)
        data["steps"][step.name] = {
            name: f"<{name}: {source} of step {step.name}>"
            for name, source in (step.option("capture") or {}).items()}
        if step is call.id_step:
            data["externalId"] = f"<the id at {step.option('externalId')} of step {step.name}>"


def _runs(step: CallSpec, data: dict[str, Any], preview: Preview) -> bool:
    """Whether ``step`` is sent for the previewed record (an error when its when fails)."""
    try:
        return step.runs(data)
    except SyncError as exc:
        preview.errors.append(str(exc))
        return False


@dataclasses.dataclass(frozen=True)
class ListingStart:
    """Where pull discovery would start a listing, as a preview is told it.

    ``full``: every record (``--full``); ``resume``: the next page of a listing that
    stopped mid-way, with the ``since`` it started from; ``cursor``: a stored cursor,
    the listing starting :data:`~shared.connector.paging.OVERLAP` before it; ``since``:
    that start given exactly; none of them: a first run (every record).
    """

    cursor: datetime | None = None
    since: datetime | None = None
    full: bool = False
    resume: paging.PageRequest | None = None

    def resolve(self) -> tuple[datetime | None, paging.PageRequest | None, str]:
        """``(since, page or None for the first, words for the title)``."""
        if self.full:
            return None, None, "first page of a full listing (--full: every record)"
        if self.resume is not None:
            since = f", since {_time(self.since)}" if self.since else ""
            return (self.since, self.resume,
                    f"page {self.resume.number}, where the stopped listing resumes{since}")
        if self.cursor is not None:
            since = paging.since_of(self.cursor)
            assert since is not None
            overlap = int(paging.OVERLAP.total_seconds())
            return since, None, (f"first page of records changed since {_time(since)} "
                                 f"(the cursor {_time(self.cursor)} minus {overlap} s)")
        if self.since is not None:
            return self.since, None, f"first page of records changed since {_time(self.since)}"
        return None, None, "first page (no cursor yet: every record)"


def preview_pull(
    doc: ConnectorDocument,
    obj: SyncObject,
    record: dict[str, Any] | None = None,
    *,
    variables: Mapping[str, Any] | None = None,
    server: str | None = None,
    since: datetime | None = None,
    start: ListingStart | None = None,
    deleted_start: ListingStart | None = None,
    links: Mapping[Link, str] | None = None,
) -> Preview:
    """Preview pulling: the listing request discovery would send first (``pull.list``,
    then ``pull.deletedList`` when declared) from ``start`` (default: ``since``, or a
    first run), and the canonical record ``record`` becomes, when one is given."""
    preview = Preview()
    if obj.pull_list is None or obj.pull_body is None:
        preview.errors.append(f"object {obj.name} has no pull")
        return preview
    context = _context(doc, variables, links)
    base = server_url(doc, variables, server)
    start = start or ListingStart(since=since)
    checker = PayloadChecker(doc)
    listings = [("pull.list", obj.pull_list, start)]
    if obj.pull_deleted_list is not None:
        listings.append(("pull.deletedList", obj.pull_deleted_list, deleted_start or start))
    for name, call, where in listings:
        begin, page, words = where.resolve()
        title = f"{name} ({obj.name}): {words}"
        try:
            plan = paging.list_request(call, base, context,
                                       page or paging.first_page(call, begin), begin)
        except SyncError as exc:
            preview.errors.append(f"{title}: {exc}")
            continue
        _show(preview, doc, checker, title, call, plan, _links(context))
        preview.notes.append(f"{name}: {paging_words(call)}")
        if paging.client_filtered(call):
            field = (call.option("incremental") or {}).get("cursorField")
            kept = f"at or after {_time(begin)}" if begin else "(no since: all of them)"
            preview.notes.append(f"{name}: the request cannot filter (incremental in: "
                                 f"client): every record is listed, discovery keeps those "
                                 f"whose {field} is {kept}")
    if record is None:
        preview.notes.append("give --record SAMPLE.json to see the canonical record an "
                             "external record becomes")
        return preview
    _canonical(preview, doc, obj, record, context)
    return preview


def paging_words(call: CallSpec) -> str:
    """How the pages after the first are asked for, in words."""
    pagination = call.option("pagination") or {"type": "none"}
    kind = pagination.get("type", "none")
    if kind == "page":
        return (f"the next pages ask {pagination['param']}="
                f"{pagination.get('start', 1) + 1}, … until a page comes back empty")
    if kind == "offset":
        return (f"the next pages advance {pagination['param']} by the records received, "
                "until a page comes back empty")
    if kind == "cursor":
        where = "body field" if pagination.get("in") == "body" else "query parameter"
        return (f"the next pages set the {where} {pagination['param']!r} to the answer's "
                f"{pagination['next']}, until it is missing or repeats")
    if kind == "link":
        return ('the next pages follow the Link header\'s rel="next" (on this server only)')
    if kind == "next-url":
        return (f"the next pages follow the URL at {pagination['next']} in the answer "
                "(on this server only)")
    return "one request: the listing has no pagination"


def _canonical(preview: Preview, doc: ConnectorDocument, obj: SyncObject,
               record: dict[str, Any], context: TransformContext) -> None:
    assert obj.pull_body is not None
    if obj.pull_deleted is not None:
        try:
            tombstone = obj.pull_deleted.evaluate(record)
        except (SyncError, ExpressionRuntimeError) as exc:
            preview.errors.append(f"pull.deleted failed on the record: {exc}")
            return
        if tombstone is not UNDEFINED and bool(tombstone):
            preview.notes.append(
                "pull.deleted is true for this record: the puller deletes its linked BSS "
                f"{obj.entity} (when the instance permits pull delete), else skips it")
            return
    try:
        canonical = obj.pull_body.apply(record, context)
    except SyncError as exc:
        preview.errors.append(f"pull transform failed: {exc}")
        return
    preview.record = canonical
    preview.sections.append((f"canonical {obj.entity} (pull {obj.name})", _json(canonical)))
    problems, waived = _links(context).waived(canonical,
                                              entity_violations(obj.entity, canonical))
    if problems:
        preview.errors += [
            f"the {obj.entity} breaks schemas/entities/{obj.entity}.schema.json at "
            f"{pointer or '/'}: {message}"
            for pointer, message in problems
        ]
    else:
        but = ", but for linked ids' placeholders" if waived else ""
        preview.notes.append(f"✓ valid against schemas/entities/{obj.entity}.schema.json{but}")
    preview.notes += [f"the {obj.entity}: {note}" for note in waived]
    preview.notes.append("linked records are shown as <placeholders> (--link "
                         "entity:bssId=externalId for real ones)")


def _section(
    preview: Preview,
    doc: ConnectorDocument,
    checker: PayloadChecker,
    title: str,
    call: CallSpec,
    base: str,
    data: dict[str, Any],
    context: TransformContext,
    body_input: Any,
    extra_headers: dict[str, str] | None = None,
) -> None:
    body: Any = UNDEFINED
    try:
        answers = {"steps": data.get("steps") or {}} if call.reads_answers else None
        body = (call.body.apply(body_input, context, answers) if call.body is not None
                else UNDEFINED)
        plan = plan_request(
            call, base_url=base, data=data, context=context, body=body, extra_headers=extra_headers
        )
    except SchemaViolation as exc:  # a form body its media type cannot carry
        preview.errors.append(f"{title}: {exc}")
        if body is not UNDEFINED:
            _check_body(preview, checker, title, call, body, _links(context))
        return
    except SyncError as exc:
        preview.errors.append(f"{title}: {exc}")
        return
    _show(preview, doc, checker, title, call, plan, _links(context))


def _show(preview: Preview, doc: ConnectorDocument, checker: PayloadChecker, title: str,
          call: CallSpec, plan: RequestPlan, links: PlaceholderLinks) -> None:
    """Add ``plan``, credentials masked, as a section; check its body."""
    plan = security.masked(plan, security.choose(doc, call.operation))
    preview.requests.append(plan)
    preview.sections.append((title, format_request(plan)))
    if plan.has_body:
        _check_body(preview, checker, title, call, plan.body, links)


def _check_body(
    preview: Preview, checker: PayloadChecker, title: str, call: CallSpec, body: Any,
    links: PlaceholderLinks,
) -> None:
    """The body as built (before any form encoding) against the request schema; what it
    says of a linked id's placeholder is a note, not an error."""
    problems, waived = links.waived(body, checker.request_violations(call.operation, body))
    where = f"the request schema of {call.operation.key}"
    if problems:
        preview.errors += [f"{title}: body breaks {where} at {pointer or '/'}: {message}"
                           for pointer, message in problems]
    else:
        but = ", but for linked ids' placeholders" if waived else ""
        preview.notes.append(f"✓ {title}: body valid against {where}{but}")
    preview.notes += [f"{title}: body {note}" for note in waived]


def format_request(plan: RequestPlan) -> str:
    lines = [f"{plan.method} {_readable_placeholders(plan.url)}"]
    lines += [f"{name}: {value}" for name, value in plan.headers.items()]
    if plan.content is not None:  # a form body: the bytes sent, as text
        lines += ["", plan.content.decode("utf-8", "replace").replace("\r\n", "\n").rstrip()]
    elif plan.has_body:
        lines += ["", _json(plan.body)]
    return "\n".join(lines)


#: A ``<placeholder>`` as the URL carries it, percent-encoded like any path value.
_ENCODED_PLACEHOLDER = re.compile(r"%3C(?:(?!%3E)[^/?#&])*%3E")


def _readable_placeholders(url: str) -> str:
    """``url`` with its placeholders shown as written (``<the id at /id of step
    customer>``), not percent-encoded: a value from an earlier answer, not a value sent."""
    return _ENCODED_PLACEHOLDER.sub(lambda m: unquote(m.group(0)), url)


def _before_placeholders(call: CallSpec) -> dict[str, str]:
    before = call.before
    if before is None:
        return {}
    return {
        name: f"<{source} of {before.operation.key}>"
        for name, source in (before.option("capture") or {}).items()
    }


def _context(doc: ConnectorDocument, variables: Mapping[str, Any] | None,
             links: Mapping[Link, str] | None = None) -> TransformContext:
    return TransformContext(lookups=doc.lookups, links=PlaceholderLinks(links),
                            variables=doc.variables(variables))


def _links(context: TransformContext) -> PlaceholderLinks:
    assert isinstance(context.links, PlaceholderLinks)
    return context.links


def _time(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)
