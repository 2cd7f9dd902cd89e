"""Pull discovery's pure parts (``services.dispatcher.listing`` / ``discovery``), and
the cursor rule with in-memory fakes: a page's cursor advances only once every message
of the page is confirmed.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.dispatcher.discovery import (
    MAX_INLINE_BYTES,
    Discovery,
    external_id_of,
    pull_message,
)
from services.dispatcher.listing import (
    ListingRetry,
    cursor_time,
    page_from_state,
    page_state,
    same_server,
    since_of,
)
from shared.audit import AuditRecord, Outcome
from shared.connector import load_connector
from shared.connector.paging import PageRequest
from shared.errors import InfrastructureError, RateLimited, RemoteUnavailable, UnsafeRequest
from shared.messaging.envelope import decode_sync_message
from shared.messaging.publisher import OutgoingMessage
from shared.storage.pull_cursors import PullCursor
from tests.integration.listing_server import listing_connector


@dataclasses.dataclass
class FakeInstance:
    id: str = "inst-1"
    org_id: str = "org-1"
    pulls: tuple[str, ...] = ("account",)

    def permitted_actions(self, entity: str, direction: str) -> list[str]:
        return ["create", "update"] if direction == "pull" and entity in self.pulls else []


@dataclasses.dataclass
class FakeResponse:
    body: Any
    headers: httpx.Headers = dataclasses.field(default_factory=httpx.Headers)
    request: str = "GET /items/page"


class FakeThirdParty:
    """Answers ``/items/page`` with ``pages`` (a list of record lists), then ``[]``."""

    base_url = "http://crm.example"

    def __init__(self, pages: list[list[dict[str, Any]]]) -> None:
        self.pages = pages
        self.sent: list[str] = []

    async def send(self, plan: Any, *, accept: Any = ()) -> FakeResponse:
        self.sent.append(plan.url)
        number = int(httpx.URL(plan.url).params.get("_page", "1"))
        return FakeResponse(self.pages[number - 1] if number <= len(self.pages) else [])


@dataclasses.dataclass
class FakeContext:
    instance: FakeInstance
    connector: Any
    client: FakeThirdParty

    def transform_context(self, links: Any) -> Any:
        from shared.transform import TransformContext

        return TransformContext(lookups={}, links=links, variables={})


class FakePublisher:
    """Confirms every message, except that the ``fail_on``-th call fails."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.fail_on = fail_on
        self.calls = 0
        self.confirmed: list[OutgoingMessage] = []

    async def publish_many(self, messages: Iterable[OutgoingMessage]) -> None:
        self.calls += 1
        if self.calls == self.fail_on:
            raise InfrastructureError("the channel closed before RabbitMQ confirmed")
        self.confirmed += list(messages)


class FakeCursors:
    def __init__(self, cursor: PullCursor | None = None) -> None:
        self.cursor = cursor or PullCursor()
        self.saved: list[int] = []  # the resume page numbers, in order

    async def get(self, instance_id: str, object_name: str) -> PullCursor:
        return self.cursor

    async def save_progress(self, instance_id: str, object_name: str, *, resume: dict[str, Any],
                            since: datetime | None, high: datetime | None, pages: int) -> None:
        self.saved.append(resume["number"])
        self.cursor = PullCursor(self.cursor.value, resume, since, high, pages)

    async def finish(self, instance_id: str, object_name: str, high: datetime | None) -> None:
        self.cursor = PullCursor(high or self.cursor.value)


class FakeAudit:
    def __init__(self) -> None:
        self.rows: list[AuditRecord] = []

    async def write(self, record: AuditRecord) -> None:
        self.rows.append(record)


def records(start: int, count: int) -> list[dict[str, Any]]:
    return [{"id": f"c{i}", "name": f"C{i}", "updatedAt": f"2026-01-01T00:{i:02d}:00Z"}
            for i in range(start, start + count)]


@pytest.fixture
def connector(tmp_path: Path) -> Any:
    return load_connector(listing_connector(tmp_path))


def discovery(connector: Any, publisher: FakePublisher, cursors: FakeCursors,
              pages: list[list[dict[str, Any]]]) -> tuple[Discovery, FakeAudit]:
    audit = FakeAudit()
    ctx = FakeContext(FakeInstance(), connector, FakeThirdParty(pages))
    return Discovery(ctx, publisher=publisher, cursors=cursors, audit=audit,  # type: ignore[arg-type]
                     run_id="run-1"), audit


async def test_a_page_not_confirmed_does_not_advance_the_cursor(connector) -> None:
    cursors, publisher = FakeCursors(), FakePublisher(fail_on=2)
    run, audit = discovery(connector, publisher, cursors, [records(0, 10), records(10, 10),
                                                          records(20, 5)])
    summary = await run.discover(connector.object("Items_page"))
    assert cursors.saved == [2]  # after page 1 only: page 2's confirms never came
    assert (cursors.cursor.resume or {})["number"] == 2 and cursors.cursor.value is None
    assert summary.error is not None and "confirmed" in summary.error
    assert [(r.outcome, r.details["stage"]) for r in audit.rows] == [
        (Outcome.DISPATCHED, "started"), (Outcome.FAILED, "failed")]
    assert audit.rows[1].details["stopped_at_page"] == 2

    again, _ = discovery(connector, FakePublisher(), cursors, [records(0, 10), records(10, 10),
                                                               records(20, 5)])
    resumed = await again.discover(connector.object("Items_page"))
    assert (resumed.resumed_at_page, resumed.published) == (2, 15)
    assert cursors.cursor == PullCursor(datetime(2026, 1, 1, 0, 24, tzinfo=UTC))


async def test_a_record_without_external_id_is_audited_and_skipped(connector) -> None:
    page = [*records(0, 2), {"name": "no id"}]
    run, audit = discovery(connector, FakePublisher(), FakeCursors(), [page])
    summary = await run.discover(connector.object("Items_page"))
    assert (summary.published, summary.without_id) == (2, 1)
    failed = [r for r in audit.rows if r.outcome is Outcome.FAILED]
    assert len(failed) == 1 and "no external id at '/id'" in (failed[0].error_message or "")


def test_pull_message_inline_then_by_reference_above_64_kb(connector) -> None:
    ctx = FakeContext(FakeInstance(), connector, FakeThirdParty([]))
    obj = connector.object("Items_page")
    small = {"id": "c1", "name": "Small"}
    message, inline = pull_message(ctx, obj, small, "c1", run_id="r", trigger="manual",  # type: ignore[arg-type]
                                   inline=True)
    decoded = decode_sync_message(message.body)
    assert inline and decoded.record == small and decoded.external_id == "c1"
    assert message.routing_key == "account.upsert.org-1.inst-1"
    assert message.exchange == "sync.pull" and message.message_id == decoded.id
    assert uuid.UUID(decoded.id).version == 7  # time-ordered (shared/ids.py)
    big = {"id": "c2", "name": "x" * MAX_INLINE_BYTES}
    message, inline = pull_message(ctx, obj, big, "c2", run_id="r", trigger="manual",  # type: ignore[arg-type]
                                   inline=True)
    assert not inline and decode_sync_message(message.body).record is None
    assert len(message.body) < 1000
    _, inline = pull_message(ctx, obj, small, "c1", run_id="r", trigger="manual",  # type: ignore[arg-type]
                             inline=False)
    assert not inline


@pytest.mark.parametrize(("record", "expected"), [
    ({"id": "a"}, "a"), ({"id": 42}, "42"), ({"id": ""}, None), ({"id": None}, None),
    ({"id": {"x": 1}}, None), ({"id": True}, None), ({}, None), ({"id": "x" * 1001}, None)])
def test_external_id_of(connector, record, expected) -> None:
    assert external_id_of(connector.object("Items_page"), record) == expected


@pytest.mark.parametrize(("value", "fmt", "expected"), [
    ("2026-01-01T00:00:10Z", "iso8601", datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)),
    ("2026-01-01T01:00:10+01:00", "iso8601", datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)),
    ("2026-01-01T00:00:10", "iso8601", datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)),
    ("2026-01-02", "date", datetime(2026, 1, 2, tzinfo=UTC)),
    (1767225610000, "epoch-ms", datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)),
    ("1767225610000", "epoch-ms", datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)),
    (1767225610, "epoch-s", datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)),
    (None, "iso8601", None), (True, "iso8601", None), ("yesterday", "iso8601", None),
    ({"a": 1}, "iso8601", None)])
def test_cursor_time(value, fmt, expected) -> None:
    assert cursor_time(value, fmt) == expected


def test_since_is_the_cursor_minus_the_overlap() -> None:
    cursor = datetime(2026, 1, 1, tzinfo=UTC)
    assert since_of(cursor, timedelta(seconds=60)) == datetime(2025, 12, 31, 23, 59,
                                                               tzinfo=UTC)
    assert since_of(None, timedelta(seconds=60)) is None


def test_listing_retry_backs_off_then_gives_up() -> None:
    retry = ListingRetry(delays=(1.0, 5.0), max_delay=30.0)
    error = RemoteUnavailable("503")
    assert [retry.delay(n, error) for n in (1, 2, 3)] == [1.0, 5.0, None]
    assert retry.delay(1, RateLimited("429", retry_after=12.0)) == 12.0
    assert retry.delay(1, RateLimited("429", retry_after=999.0)) == 30.0


def test_a_page_survives_its_json_round_trip() -> None:
    page = PageRequest({"_page": 3}, {"after": "x"}, url="http://a/b?c=1", cursor="x", number=3)
    assert page_from_state(json.loads(json.dumps(page_state(page)))) == page


@pytest.mark.parametrize("url", ["http://crm.example/items?page=2", "/items?page=2",
                                 "items?page=2"])
def test_a_next_url_on_the_server_is_kept(connector, url) -> None:
    call = connector.object("Items_link").pull_list
    assert same_server("http://crm.example", url, call).startswith("http://crm.example/")


@pytest.mark.parametrize("url", ["http://evil.example/items", "https://crm.example/items",
                                 "http://crm.example:8080/items", "//evil.example/x",
                                 "ftp://crm.example/x"])
def test_a_next_url_elsewhere_is_refused_naming_it(connector, url) -> None:
    call = connector.object("Items_link").pull_list
    with pytest.raises(UnsafeRequest, match="another host"):
        same_server("http://crm.example", url, call)


# -- pull.deletedList in the connector: compiled, or every problem located -------------

ACME = Path(__file__).resolve().parents[2] / "connectors" / "acme-crm.json"
DELETED = "/x-synchronization/objects/Account/pull/deletedList"


def acme_with_deleted_list(tmp_path: Path, deleted_list: dict[str, Any]) -> Path:
    document = json.loads(ACME.read_text())
    document["x-synchronization"]["objects"]["Account"]["pull"]["deletedList"] = deleted_list
    path = tmp_path / "acme-deletes.json"
    path.write_text(json.dumps(document, indent=2))
    return path


def test_a_deleted_list_compiles_as_a_listing(tmp_path) -> None:
    path = acme_with_deleted_list(tmp_path, {
        "operation": "listCompanies", "params": {"_sort": "updatedAt"}, "records": "",
        "externalId": "/id", "pagination": {"type": "page", "param": "_page", "size": 50},
        "incremental": {"param": "updatedAt_gte", "cursorField": "/updatedAt"}})
    obj = load_connector(path).object("Account")
    call = obj.pull_deleted_list
    assert call is not None and obj.call("pull", "deleted") is call
    assert (call.kind, call.operation.key, call.option("externalId")) == (
        "deleted", "GET /companies", "/id")
    assert call.option("pagination")["size"] == 50


def test_every_deleted_list_problem_is_located(tmp_path) -> None:
    from shared.connector import check_connector

    path = acme_with_deleted_list(tmp_path, {
        "operation": "listCompaniez", "externalId": "id", "recrds": "/deleted",
        "params": {"since": "{record.updatedAt}"}})
    document, problems = check_connector(path)
    assert document is None
    found = {(p.pointer, p.message) for p in problems if p.severity == "error"}
    lines = path.read_text().splitlines()

    def expect(pointer: str, words: str) -> None:
        matching = [p for p in problems if p.pointer == pointer and words in p.message]
        assert matching, f"no problem at {pointer} saying {words!r}: {sorted(found)}"
        assert matching[0].line is not None and 0 < matching[0].line <= len(lines)

    expect(f"{DELETED}/operation", "unknown operation 'listCompaniez'")
    expect(f"{DELETED}/externalId", "does not have the expected form")
    expect(f"{DELETED}/recrds", "unknown key 'recrds'")

    known = acme_with_deleted_list(tmp_path, {
        "operation": "listCompanies", "params": {"accountNumber": "{record.name}"},
        "pagination": {"type": "cursor", "in": "body", "param": "after", "next": "/next"}})
    _, problems = check_connector(known)
    errors = {(p.pointer, p.message) for p in problems if p.severity == "error"}
    assert any(pointer == f"{DELETED}/params/accountNumber" and "record" in message
               for pointer, message in errors), errors
    assert (DELETED, "pagination or incremental 'in: body' needs a list 'body' transform "
                     "(its input has since, cursor, pageSize)") in errors


def test_a_delete_message_names_the_record_and_carries_none(connector) -> None:
    ctx = FakeContext(FakeInstance(), connector, FakeThirdParty([]))
    message, inline = pull_message(ctx, connector.object("Items_page"), None,  # type: ignore[arg-type]
                                   "c7", run_id="r", trigger="manual", inline=True,
                                   action="delete")
    decoded = decode_sync_message(message.body)
    assert (inline, decoded.action, decoded.external_id, decoded.record) == (
        False, "delete", "c7", None)
    assert message.routing_key == "account.delete.org-1.inst-1"


def test_a_client_side_incremental_filter_drops_what_changed_before_since(tmp_path) -> None:
    from services.dispatcher.listing import changed_since
    from shared.connector import paging

    path = acme_with_deleted_list(tmp_path, {
        "operation": "listCompanies", "externalId": "/id",
        "incremental": {"in": "client", "cursorField": "/deletedAt"}})
    call = load_connector(path).object("Account").pull_deleted_list
    assert call is not None and paging.client_filtered(call)
    since = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    assert paging.since_value(call, since) is None  # never sent
    plan = paging.list_request(call, "http://crm.example", FakeContext(
        FakeInstance(), None, FakeThirdParty([])).transform_context(None),
        paging.first_page(call, since), since)
    assert plan.url == "http://crm.example/companies"
    listed = [{"id": "a", "deletedAt": "2026-01-01T00:04:59Z"},
              {"id": "b", "deletedAt": "2026-01-01T00:05:00Z"},
              {"id": "c"}, {"id": "d", "deletedAt": "not a time"},
              {"id": "e", "deletedAt": "2026-01-02T00:00:00Z"}]
    assert [r["id"] for r in changed_since(call, listed, since)] == ["b", "c", "d", "e"]
    assert changed_since(call, listed, None) == listed


def test_a_client_side_filter_with_a_param_is_a_located_error(tmp_path) -> None:
    from shared.connector import check_connector

    path = acme_with_deleted_list(tmp_path, {
        "operation": "listCompanies",
        "incremental": {"in": "client", "param": "updatedAt_gte", "cursorField": "/x"}})
    _, problems = check_connector(path)
    [problem] = [p for p in problems if p.severity == "error"]
    assert problem.pointer == f"{DELETED}/incremental/param"
    assert "'in: client' sends no since value: drop 'param'" in problem.message
    assert problem.line is not None
