"""``bss-sync preview``: what a record becomes on the wire, without sending anything.

Push: the HTTP request(s) the pusher would send for a BSS record — method, full
URL with server variables, headers with credentials masked, body — and the body
checked against the operation's request schema. Pull: the first-page list
request, and the canonical record a sample external record becomes, checked
against ``schemas/``. Links to other records are shown as placeholders.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from shared.connector import paging, security
from shared.connector.document import CallSpec, ConnectorDocument, SyncObject
from shared.connector.idempotency import idempotency_key
from shared.connector.payloads import PayloadChecker, entity_errors
from shared.connector.request import RequestPlan, plan_request, server_url, with_query
from shared.errors import SyncError
from shared.transform import UNDEFINED, TransformContext


class PlaceholderLinks:
    """Link lookups for previews: every linked id is shown as a readable placeholder."""

    def external_id(self, entity: str, bss_id: str) -> str:
        return f"<{entity} {bss_id} in the third party>"

    def bss_id(self, entity: str, external_id: str) -> str:
        return f"<{entity} {external_id} in the BSS>"


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
) -> Preview:
    """Preview pushing ``record`` with ``action`` (create, update or delete)."""
    preview = Preview()
    call = obj.push.get(action)
    if call is None:
        preview.errors.append(f"object {obj.name} has no push.{action}")
        return preview
    context = _context(doc, variables)
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
    preview.notes.append("linked records are shown as <placeholders>; credentials as ***")
    return preview


def preview_pull(
    doc: ConnectorDocument,
    obj: SyncObject,
    record: dict[str, Any],
    *,
    variables: Mapping[str, Any] | None = None,
    server: str | None = None,
    since: datetime | None = None,
) -> Preview:
    """Preview pulling: the first-page list request and the canonical record."""
    preview = Preview()
    if obj.pull_list is None or obj.pull_body is None:
        preview.errors.append(f"object {obj.name} has no pull")
        return preview
    context = _context(doc, variables)
    base = server_url(doc, variables, server)
    call = obj.pull_list
    page = paging.first_page(call, since)
    list_input = {
        "since": paging.since_value(call, since),
        "cursor": None,
        "pageSize": paging.page_size(call),
    }
    title = (
        "pull: first page of records changed since " + since.isoformat()
        if since
        else "pull: first page (first run: every record)"
    )
    _section(
        preview,
        doc,
        PayloadChecker(doc),
        title,
        call,
        base,
        list_input,
        context,
        list_input,
        page=page,
    )
    try:
        canonical = obj.pull_body.apply(record, context)
    except SyncError as exc:
        preview.errors.append(f"pull transform failed: {exc}")
        return preview
    preview.record = canonical
    preview.sections.append((f"canonical {obj.entity} (pull {obj.name})", _json(canonical)))
    problems = entity_errors(obj.entity, canonical)
    if problems:
        preview.errors += [
            f"the {obj.entity} breaks schemas/entities/{obj.entity}.schema.json {p}"
            for p in problems
        ]
    else:
        preview.notes.append(f"✓ valid against schemas/entities/{obj.entity}.schema.json")
    preview.notes.append("linked records are shown as <placeholders>")
    return preview


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
    page: paging.PageRequest | None = None,
) -> None:
    try:
        body = call.body.apply(body_input, context) if call.body is not None else UNDEFINED
        if page is not None and page.body_fields and isinstance(body, dict):
            body = {**body, **page.body_fields}
        plan = plan_request(
            call, base_url=base, data=data, context=context, body=body, extra_headers=extra_headers
        )
        if page is not None and page.query:
            plan = dataclasses.replace(plan, url=with_query(plan.url, page.query))
    except SyncError as exc:
        preview.errors.append(f"{title}: {exc}")
        return
    plan = security.masked(plan, security.choose(doc, call.operation))
    preview.requests.append(plan)
    preview.sections.append((title, format_request(plan)))
    if plan.has_body:
        problems = checker.request_errors(call.operation, plan.body)
        where = f"the request schema of {call.operation.key}"
        if problems:
            preview.errors += [f"{title}: body breaks {where} {p}" for p in problems]
        else:
            preview.notes.append(f"✓ {title}: body valid against {where}")


def format_request(plan: RequestPlan) -> str:
    lines = [f"{plan.method} {plan.url}"]
    lines += [f"{name}: {value}" for name, value in plan.headers.items()]
    if plan.has_body:
        lines += ["", _json(plan.body)]
    return "\n".join(lines)


def _before_placeholders(call: CallSpec) -> dict[str, str]:
    before = call.before
    if before is None:
        return {}
    return {
        name: f"<{source} of {before.operation.key}>"
        for name, source in (before.option("capture") or {}).items()
    }


def _context(doc: ConnectorDocument, variables: Mapping[str, Any] | None) -> TransformContext:
    return TransformContext(lookups=doc.lookups, links=PlaceholderLinks(),
                            variables=doc.variables(variables))


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)
