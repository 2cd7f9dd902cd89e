"""Poison never blocks a consumer (issue 9: the settle step can never loop).

One test per kind of poison — an absurd envelope ``attempt``, an absurd ``x-attempt``
header, a third party answering ``HTTP/1.1 999 Weird``, NUL bytes and lone surrogates,
over-long strings, an audit row PostgreSQL refuses for its data — each mixing 300
poisoned messages with good ones on one consumer whose prefetch is small: a poisoned
message held unacked (as it used to be) fills the prefetch and the good ones stop,
so the test times out. Each proves: every good message audited once, every poisoned
one settled once (dead-lettered once where it must be), the queues empty.

Real RabbitMQ, PostgreSQL and HTTP server; the consumers run in the test's loop
(``tests/integration/test_messaging.py``'s helpers).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.dispatcher.events import EVENT_CODEC
from shared.audit.record import Outcome
from shared.connector import load_connector
from shared.connector.request import RequestPlan
from shared.http import InstanceEndpoint, ThirdPartyClient
from shared.messaging.codec import HandlerResult, InboundMessage
from shared.messaging.consumer import Consumer, ConsumerConfig
from shared.messaging.envelope import SyncMessage
from shared.messaging.publisher import OutgoingMessage
from shared.messaging.topology import DISPATCHER, EVENTS_EXCHANGE, PUSH_EXCHANGE
from shared.storage.db import Database
from shared.transform import UNDEFINED
from tests.fixtures.amqp import TestTopology
from tests.integration.test_http_transport import raw_server, read_request
from tests.integration.test_messaging import PUSH, outgoing, publish, pusher, sync_message

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
POISON = 300
GOOD = 200
#: Small, so that a few held messages would stop the consumer.
FLOW = {"prefetch": 8, "concurrency": 4}
SETTLE_TIMEOUT = 90.0


def interleave(poison: list[OutgoingMessage], good: list[OutgoingMessage]
               ) -> list[OutgoingMessage]:
    """Poison first and spread through the good ones (3 poisoned for 2 good)."""
    out: list[OutgoingMessage] = []
    p, g = iter(poison), iter(good)
    for index in range(len(poison) + len(good)):
        take = p if index % 5 < 3 else g
        item = next(take, None) or next(p, None) or next(g, None)
        if item is not None:
            out.append(item)
    return out


async def drain(consumer: Consumer, url: str, messages: list[OutgoingMessage]) -> None:
    """Publish ``messages`` (confirmed), run ``consumer`` until its queue is drained."""
    await publish(url, messages)
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.wait_for(consumer.join(), SETTLE_TIMEOUT)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)


async def finals(db: Database, ids: Iterable[str]) -> Counter[tuple[str, str]]:
    """(message id, outcome) → how many final-or-retrying rows, for ``ids``."""
    found = await db.fetch("SELECT message_id, outcome FROM audit_log"
                           " WHERE message_id = ANY(%s)", (list(ids),))
    return Counter((r["message_id"], r["outcome"]) for r in found)


def dead_letters(topology: TestTopology, queue: str) -> Counter[str]:
    return Counter(d.message_id for d in topology.peek(queue, limit=POISON + 50))


def assert_empty(topology: TestTopology, service: str) -> None:
    queue = topology.queue(service)
    names = [queue.name, *(queue.retry_queue(rung).name
                          for rung in range(len(topology.retry_delays)))]
    assert {name: topology.ready(name) for name in names} == dict.fromkeys(names, 0)


async def assert_good_flowed(db: Database, good: list[SyncMessage], outcome: Outcome) -> None:
    rows = await finals(db, [m.id for m in good])
    assert rows == Counter({(m.id, outcome.value): 1 for m in good})


async def updated(message: InboundMessage[SyncMessage]) -> Outcome:
    return Outcome.UPDATED


# -------------------------------------------------------------------------- at decode


async def test_envelopes_with_an_absurd_attempt_are_dead_lettered_once_while_good_flow(
        topology: TestTopology, db: Database, audit_writer: Any) -> None:
    poison = [sync_message(f"p-{n}").to_dict() | {"attempt": 2**31 + n} for n in range(POISON)]
    poison[0]["redeliveries"] = 2**40
    good = [sync_message(f"g-{n}") for n in range(GOOD)]
    key = "account.update.org1.inst1"
    await drain(pusher(topology, updated, audit_writer, **FLOW), topology.url, interleave(
        [OutgoingMessage(PUSH_EXCHANGE, key, json.dumps(p).encode(), p["id"]) for p in poison],
        [outgoing(m) for m in good]))

    await assert_good_flowed(db, good, Outcome.UPDATED)
    assert dead_letters(topology, PUSH.dead_queue) == Counter({p["id"]: 1 for p in poison})
    assert await finals(db, [p["id"] for p in poison]) == Counter(
        {(p["id"], "dead"): 1 for p in poison})
    [one] = [d for d in topology.peek(PUSH.dead_queue, 1)]
    assert one.headers["x-error-class"] == "InvalidMessage"
    assert "/attempt" in one.headers["x-error"] or "/redeliveries" in one.headers["x-error"]
    assert_empty(topology, PUSH.service)


def event(n: int, record: str) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "entity": "account", "event": "updated",
            "organizationId": "org1", "recordId": f"{record}-{n}",
            "occurredAt": datetime.now(UTC).isoformat()}


async def test_events_with_an_absurd_x_attempt_header_are_dead_lettered_once_while_good_flow(
        topology: TestTopology, db: Database, audit_writer: Any) -> None:
    async def skip(message: InboundMessage[dict[str, Any]]) -> HandlerResult:
        return HandlerResult(Outcome.SKIPPED, details={"reason": "test"})

    queue = topology.queue(DISPATCHER)
    poison = [event(n, "p") for n in range(POISON)]
    good = [event(n, "g") for n in range(GOOD)]
    headers: list[Any] = [2**31, 2**63 - 1, -1, "many", 1001]
    consumer = Consumer(queue, EVENT_CODEC, skip, audit_writer,
                        ConsumerConfig(topology.url, **FLOW))  # type: ignore[arg-type]
    await drain(consumer, topology.url, interleave(
        [OutgoingMessage(EVENTS_EXCHANGE, "account.updated", json.dumps(e).encode(), e["id"],
                         {"x-attempt": headers[n % len(headers)]})
         for n, e in enumerate(poison)],
        [OutgoingMessage(EVENTS_EXCHANGE, "account.updated", json.dumps(e).encode(), e["id"],
                         {"x-attempt": n % 3}) for n, e in enumerate(good)]))

    rows = await finals(db, [e["id"] for e in good])
    assert rows == Counter({(e["id"], "skipped"): 1 for e in good})
    assert dead_letters(topology, queue.dead_queue) == Counter({e["id"]: 1 for e in poison})
    assert await finals(db, [e["id"] for e in poison]) == Counter(
        {(e["id"], "dead"): 1 for e in poison})
    reasons = {d.headers["x-error"] for d in topology.peek(queue.dead_queue, POISON)}
    assert reasons == {f"the x-attempt header is {shown}: an attempt is an integer from 0 to 1000"
                       for shown in ("2147483648", str(2**63 - 1), "-1", "'many'", "1001")}
    assert_empty(topology, DISPATCHER)


# -------------------------------------------------------------------- from the third party


@pytest.fixture
async def third_party(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[
        tuple[ThirdPartyClient, Counter[str]]]:
    """The Acme connector's client on a raw server: ``/companies/p-…`` answers
    ``HTTP/1.1 999 Weird``, anything else 200. Counts the requests per path."""
    seen: Counter[str] = Counter()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            path = head.split(b" ", 2)[1].decode()
            seen[path] += 1
            line = b"HTTP/1.1 999 Weird" if path.startswith("/companies/p-") else b"HTTP/1.1 200 OK"
            writer.write(line + b"\r\nContent-Type: application/json\r\n"
                                b"Content-Length: 11\r\n\r\n{\"id\":\"x1\"}")
            await writer.drain()

    monkeypatch.setenv("T_APIKEY", "k3y")
    acme = load_connector(ROOT / "connectors" / "acme-crm.json")
    async with raw_server(serve) as url:
        endpoint = InstanceEndpoint("acme-1", variables={"port": url.rsplit(":", 1)[1]},
                                    credentials={"apiKey": "env:T_APIKEY"})
        async with ThirdPartyClient(acme, endpoint) as client:
            yield client, seen


async def test_a_third_party_answering_status_999_dead_letters_once_no_storm(
        topology: TestTopology, db: Database, audit_writer: Any,
        third_party: tuple[ThirdPartyClient, Counter[str]]) -> None:
    client, seen = third_party
    operation = client.document.operations["getCompany"]

    async def handler(message: InboundMessage[SyncMessage]) -> HandlerResult:
        url = f"{client.base_url}/companies/{message.context.record_id}"
        answer = await client.send(RequestPlan("GET", url, {}, UNDEFINED, operation))
        return HandlerResult(Outcome.UPDATED, http_status=answer.status)

    poison = [sync_message(f"p-{n}") for n in range(POISON)]
    good = [sync_message(f"g-{n}") for n in range(GOOD)]
    await drain(pusher(topology, handler, audit_writer, **FLOW), topology.url,
                interleave([outgoing(m) for m in poison], [outgoing(m) for m in good]))

    await assert_good_flowed(db, good, Outcome.UPDATED)
    assert dead_letters(topology, PUSH.dead_queue) == Counter({m.id: 1 for m in poison})
    assert seen == Counter({f"/companies/{m.record_id}": 1 for m in [*poison, *good]})
    dead_rows = await db.fetch(
        "SELECT message_id, http_status, error_class, error_message, details FROM audit_log"
        " WHERE outcome = 'dead'")
    assert len(dead_rows) == POISON and {r["message_id"] for r in dead_rows} == {
        m.id for m in poison}
    for row in dead_rows:  # the status stored as NULL, the value kept
        assert (row["http_status"], row["error_class"]) == (None, "RemoteProtocolError")
        assert row["details"]["normalised"] == {"http_status": 999}
        # the error's own details: what was sent and the answer's status line
        assert row["details"]["status_line"] == "HTTP/1.1 999 Weird"
        assert row["details"]["request"].startswith("GET /companies/p-")
        assert row["error_message"].endswith("not HTTP: HTTP/1.1 999 Weird")
    [one] = topology.peek(PUSH.dead_queue, 1)
    assert one.headers["x-error"].endswith("status line that is not HTTP: HTTP/1.1 999 Weird")
    assert (one.headers["x-error-class"], one.headers["x-http-status"]) == (
        "RemoteProtocolError", 999)
    assert_empty(topology, PUSH.service)


# ------------------------------------------------------------- values the audit row holds


async def test_nul_bytes_and_lone_surrogates_reach_the_audit_row_fitted_while_good_flow(
        topology: TestTopology, db: Database, audit_writer: Any) -> None:
    """NUL in an envelope's record id and in what a handler reports (external id,
    details) is replaced and audited; a lone surrogate escaped in an envelope is
    refused at decode (it could not go on as UTF-8) and dead-lettered once."""
    async def handler(message: InboundMessage[SyncMessage]) -> HandlerResult:
        record = message.context.record_id or ""
        if record.startswith("nul"):
            return HandlerResult(Outcome.UPDATED, external_id="x\x00\udcff",
                                 details={"remote\x00": "said \x00\ud800", "ok": True})
        return HandlerResult(Outcome.UPDATED)

    nul = [sync_message(f"nul\x00{n}") for n in range(POISON // 2)]
    surrogate = [sync_message(f"s-{n}").to_dict() | {"record_id": f"s-\ud800{n}"}
                 for n in range(POISON // 2)]
    good = [sync_message(f"g-{n}") for n in range(GOOD)]
    key = "account.update.org1.inst1"
    bodies = [OutgoingMessage(PUSH_EXCHANGE, key, json.dumps(s).encode(), s["id"])
              for s in surrogate]
    await drain(pusher(topology, handler, audit_writer, **FLOW), topology.url,
                interleave([outgoing(m) for m in nul] + bodies, [outgoing(m) for m in good]))

    await assert_good_flowed(db, good, Outcome.UPDATED)
    await assert_good_flowed(db, nul, Outcome.UPDATED)  # fitted, audited once, not dead
    fitted = await db.fetch("SELECT record_id, external_id, details FROM audit_log"
                            " WHERE message_id = ANY(%s)", ([m.id for m in nul],))
    assert all(r["record_id"].startswith("nul\ufffd") for r in fitted)
    assert all(r["external_id"] == "x\ufffd\ufffd" for r in fitted)
    assert all(r["details"]["remote\ufffd"] == "said \ufffd\ufffd" for r in fitted)
    assert dead_letters(topology, PUSH.dead_queue) == Counter({s["id"]: 1 for s in surrogate})
    [one] = topology.peek(PUSH.dead_queue, 1)
    assert "/record_id holds a lone surrogate" in one.headers["x-error"]
    assert_empty(topology, PUSH.service)


async def test_over_long_strings_are_cut_or_refused_at_decode_while_good_flow(
        topology: TestTopology, db: Database, audit_writer: Any) -> None:
    """Long strings a handler reports (a remote id, details) are cut with a marker and
    audited; an envelope with a record id over its schema's 255 characters is
    dead-lettered once at decode."""
    async def handler(message: InboundMessage[SyncMessage]) -> HandlerResult:
        if (message.context.record_id or "").startswith("long"):
            return HandlerResult(Outcome.UPDATED, external_id="€" * 5000,
                                 details={"body": "b" * 100_000})
        return HandlerResult(Outcome.UPDATED)

    long_reports = [sync_message(f"long-{n}") for n in range(POISON // 2)]
    long_ids = [sync_message(f"id-{n}").to_dict() | {"record_id": f"{n}-" + "r" * 300}
                for n in range(POISON // 2)]
    good = [sync_message(f"g-{n}") for n in range(GOOD)]
    key = "account.update.org1.inst1"
    await drain(pusher(topology, handler, audit_writer, **FLOW), topology.url, interleave(
        [outgoing(m) for m in long_reports]
        + [OutgoingMessage(PUSH_EXCHANGE, key, json.dumps(m).encode(), m["id"])
           for m in long_ids],
        [outgoing(m) for m in good]))

    await assert_good_flowed(db, good, Outcome.UPDATED)
    await assert_good_flowed(db, long_reports, Outcome.UPDATED)
    cut = await db.fetch("SELECT external_id, details FROM audit_log WHERE message_id = ANY(%s)",
                         ([m.id for m in long_reports],))
    for row in cut:
        assert row["external_id"].endswith("…") and len(row["external_id"].encode()) <= 1000
        assert row["details"]["body"].endswith("…") and len(row["details"]["body"]) == 4000
        assert row["details"]["normalised"]["external_id"] == "cut from 5000 characters"
    assert dead_letters(topology, PUSH.dead_queue) == Counter({m["id"]: 1 for m in long_ids})
    [one] = topology.peek(PUSH.dead_queue, 1)
    assert "/record_id" in one.headers["x-error"]
    assert_empty(topology, PUSH.service)


@pytest.fixture
async def refused_records(db: Database) -> AsyncIterator[None]:
    """PostgreSQL refuses (a test-only CHECK) the audit rows of records ``refused-…``:
    a data refusal no normalisation can foresee."""
    await db.execute("ALTER TABLE audit_log ADD CONSTRAINT no_refused_records"
                     " CHECK (record_id IS NULL OR record_id NOT LIKE 'refused-%')")
    try:
        yield
    finally:
        await db.execute("ALTER TABLE audit_log DROP CONSTRAINT no_refused_records")


async def test_rows_postgresql_refuses_dead_letter_their_message_once_while_good_flow(
        topology: TestTopology, db: Database, audit_writer: Any,
        refused_records: None) -> None:
    handled: Counter[str] = Counter()

    async def handler(message: InboundMessage[SyncMessage]) -> Outcome:
        handled[message.context.message_id or ""] += 1
        return Outcome.UPDATED

    poison = [sync_message(f"refused-{n}") for n in range(POISON)]
    good = [sync_message(f"g-{n}") for n in range(GOOD)]
    await drain(pusher(topology, handler, audit_writer, **FLOW), topology.url,
                interleave([outgoing(m) for m in poison], [outgoing(m) for m in good]))

    await assert_good_flowed(db, good, Outcome.UPDATED)
    assert handled == Counter({m.id: 1 for m in [*poison, *good]})  # none handled twice
    assert dead_letters(topology, PUSH.dead_queue) == Counter({m.id: 1 for m in poison})
    minimal = await db.fetch(
        "SELECT message_id, outcome, record_id, error_class, error_message, details"
        " FROM audit_log WHERE message_id = ANY(%s)", ([m.id for m in poison],))
    assert Counter((r["message_id"], r["outcome"]) for r in minimal) == Counter(
        {(m.id, "dead"): 1 for m in poison})
    for row in minimal:
        assert (row["record_id"], row["error_class"]) == (None, "AuditRowRefused")
        assert "no_refused_records" in row["error_message"]
        assert row["details"]["refused_outcome"] == "updated"
    [one] = topology.peek(PUSH.dead_queue, 1)
    assert one.headers["x-error-class"] == "AuditRowRefused"
    assert "no_refused_records" in one.headers["x-error"]
    assert_empty(topology, PUSH.service)
