"""The sandbox BSS against real PostgreSQL and RabbitMQ, through real HTTP.

Every response a test receives is checked against ``schemas/bss-api.openapi.json``
(status declared for the operation, media type, body schema — and, for records,
the entity's own schema) by :class:`Contract`, hooked into the HTTP client.
Events are read from a queue bound to ``bss.events`` in the test's own vhost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from jsonschema import Draft202012Validator
from kombu import Connection, Exchange, Queue

from sandbox.server import SandboxServer
from sandbox.settings import SandboxSettings
from shared.bss import BssClient
from shared.errors import BssConflict
from shared.messaging.management import AmqpUrl
from shared.messaging.publisher import OutgoingMessage
from shared.messaging.tooling import publish_blocking
from shared.messaging.topology import EVENTS_EXCHANGE
from shared.schemas import ENTITIES, load_schema, registry, schema_uri, validator
from shared.storage.db import quote_ident
from tests.fixtures.tcp_proxy import NetworkLoop, TcpProxy
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration

ORG = "acme-telecom"
#: Routing-key prefix of the markers a test publishes behind the sandbox's events.
SENTINEL = "test-sentinel"


# ---------------------------------------------------------------------- the contract


class Contract:
    """Checks responses against the operations of ``bss-api.openapi.json``."""

    def __init__(self) -> None:
        self.doc = load_schema("bss-api.openapi")
        self.base = schema_uri("bss-api.openapi")
        self.checked: Counter[str] = Counter()
        self._validators: dict[str, Draft202012Validator] = {}
        self._paths = [(re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", t) + "$"), t)
                       for t in self.doc["paths"]]

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any], dict[str, str]]:
        for pattern, template in self._paths:
            match = pattern.match(path)
            if match and method.lower() in self.doc["paths"][template]:
                return template, self.doc["paths"][template][method.lower()], match.groupdict()
        raise AssertionError(f"{method} {path} is not an operation of the contract")

    def check(self, response: httpx.Response) -> None:
        request = response.request
        template, op, params = self.operation(request.method, request.url.path)
        status = str(response.status_code)
        responses = op["responses"]
        assert status in responses or "default" in responses, \
            f"{op['operationId']} does not declare status {status}: {response.text[:300]}"
        key = status if status in responses else "default"
        declared, pointer = self._resolve(
            responses[key], f"/paths/{_escape(template)}/{request.method.lower()}/responses/{key}")
        self.checked[f"{op['operationId']} {status}"] += 1
        content = declared.get("content")
        if not content:
            assert not response.content, f"{op['operationId']} {status} must have no body"
            return
        media = response.headers.get("content-type", "").split(";")[0].strip()
        assert media in content, f"{op['operationId']} {status}: {media!r} not in {list(content)}"
        body = response.json()
        self._validate(f"{pointer}/content/{_escape(media)}/schema", body)
        schema_ref = content[media]["schema"].get("$ref", "")
        entity = params.get("entity")
        if entity in ENTITIES and schema_ref.endswith("/StoredRecord"):
            _assert_valid(validator(f"entities/{entity}"), body)
        if entity in ENTITIES and schema_ref.endswith("/RecordPage"):
            for item in body["items"]:
                _assert_valid(validator(f"entities/{entity}"), item)

    def _resolve(self, node: dict[str, Any], pointer: str) -> tuple[dict[str, Any], str]:
        while "$ref" in node:
            pointer = node["$ref"].removeprefix("#")
            node = self.doc
            for token in pointer.strip("/").split("/"):
                node = node[token.replace("~1", "/").replace("~0", "~")]
        return node, pointer

    def _validate(self, pointer: str, body: Any) -> None:
        if pointer not in self._validators:
            self._validators[pointer] = Draft202012Validator(
                {"$ref": f"{self.base}#{pointer}"}, registry=registry(),
                format_checker=Draft202012Validator.FORMAT_CHECKER)
        _assert_valid(self._validators[pointer], body)


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _assert_valid(check: Draft202012Validator, body: Any) -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in
              check.iter_errors(body)]
    assert not errors, f"response breaks the contract: {errors[:5]}"


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract()


# ---------------------------------------------------------------------- fixtures


@pytest.fixture
def sandbox_schema(database_url: str) -> Iterator[str]:
    """A PostgreSQL schema of the test's own for the sandbox; dropped afterwards."""
    schema = f"sandbox_t_{secrets.token_hex(4)}"
    yield schema
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")


def _settings(database_url: str, schema: str, amqp_url: str, **kw: Any) -> SandboxSettings:
    return SandboxSettings(database_url=database_url, schema=schema, amqp_url=amqp_url,
                           poll_interval=0.5, backoff_cap=1.0, **kw)


@contextlib.asynccontextmanager
async def _client(server: SandboxServer, contract: Contract,
                  **kw: Any) -> AsyncIterator[httpx.AsyncClient]:
    async def check(response: httpx.Response) -> None:
        await response.aread()
        contract.check(response)

    async with httpx.AsyncClient(base_url=server.url, timeout=10.0,
                                 event_hooks={"response": [check]}, **kw) as client:
        yield client


@pytest.fixture
async def api(database_url: str, sandbox_schema: str,
              contract: Contract) -> AsyncIterator[httpx.AsyncClient]:
    """A contract-checking client of a sandbox without relay (API only)."""
    settings = _settings(database_url, sandbox_schema, "amqp://unused/", relay_enabled=False)
    with SandboxServer(settings, mode="thread") as server:
        async with _client(server, contract) as client:
            yield client


class EventTap:
    """An exclusive queue bound to ``bss.events`` ``#``: every event the sandbox publishes."""

    def __init__(self, amqp_url: str) -> None:
        self.url = amqp_url
        self._conn = Connection(amqp_url)
        self._channel = self._conn.channel()
        self.name = f"sandbox-test-{secrets.token_hex(3)}"
        exchange = Exchange(EVENTS_EXCHANGE, type="topic", durable=True)
        Queue(self.name, exchange, routing_key="#", exclusive=True)(self._channel).declare()
        self.events: list[dict[str, Any]] = []
        self.routing_keys: list[str] = []
        self.message_ids: list[str | None] = []
        self._sentinels: set[str] = set()

    def drain(self) -> int:
        while (message := self._channel.basic_get(self.name, no_ack=True)) is not None:
            if message.delivery_info["routing_key"].startswith(SENTINEL):
                self._sentinels.add(message.properties.get("message_id"))
                continue
            self.events.append(json.loads(message.body))
            self.routing_keys.append(message.delivery_info["routing_key"])
            self.message_ids.append(message.properties.get("message_id"))
        return len(self.events)

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        await eventually(lambda: self.drain() >= count, timeout=timeout,
                         what=f"{count} events on bss.events")
        return self.events

    async def everything(self, database_url: str, schema: str) -> int:
        """Every event the sandbox will ever publish for what is in its outbox now: once
        the outbox is empty (each row marked after the broker confirmed its event, so no
        row can be published again), a sentinel published to ``bss.events`` comes back
        through the tap's queue after all of them. The number of events then."""
        await eventually(lambda: _outbox_empty(database_url, schema),
                         what="every outbox row published and marked")
        sentinel = secrets.token_hex(4)
        publish_blocking(self.url, [OutgoingMessage(EVENTS_EXCHANGE, f"{SENTINEL}.{sentinel}",
                                                    b"{}", sentinel)])
        await eventually(lambda: self.drain() >= 0 and sentinel in self._sentinels,
                         what="the sentinel, behind every event published before it")
        return len(self.events)

    def close(self) -> None:
        self._conn.release()


async def _outbox_empty(database_url: str, schema: str) -> bool:
    return await _pending_outbox(database_url, schema) == 0


async def _pending_outbox(database_url: str, schema: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            f"SELECT count(*) FROM {quote_ident(schema)}.outbox WHERE published_at IS NULL")
        row = await cur.fetchone()
        return int(row[0]) if row else 0


# ---------------------------------------------------------------------- sample records


def _valid_record(entity: str, n: int = 0) -> dict[str, Any]:
    """A small valid body of ``entity`` (the sandbox does not enforce references)."""
    return {
        "account": {"name": f"Northwind {n}", "currency": "EUR", "status": "active",
                    "addresses": [{"line1": "12 rue de la Paix", "city": "Paris",
                                   "countryCode": "FR", "isBilling": True}]},
        "contact": {"firstName": "Ada", "lastName": f"Lovelace {n}", "accountId": "acc_1",
                    "email": "ada@example.com"},
        "order": {"accountId": "acc_1", "currency": "EUR", "status": "draft",
                  "lines": [{"quantity": 2, "unitPrice": 10, "total": 20}]},
        "invoice": {"accountId": "acc_1", "number": f"INV-{n}", "currency": "EUR",
                    "status": "issued", "issueDate": "2025-03-01"},
        "product": {"name": f"Fibre {n}", "billingType": "recurring",
                    "billingPeriod": "monthly", "unitPrice": 49.9},
        "payment": {"accountId": "acc_1", "amount": 12.5, "currency": "EUR"},
        "case": {"subject": f"Line down {n}", "priority": "high", "status": "open"},
        "subscription": {"accountId": "acc_1", "productId": "prd_1", "quantity": 3},
    }[entity]


_CHANGE = {"account": {"status": "suspended"}, "contact": {"jobTitle": "CFO"},
           "order": {"status": "confirmed"}, "invoice": {"status": "paid"},
           "product": {"active": False}, "payment": {"status": "completed"},
           "case": {"status": "resolved"}, "subscription": {"status": "active"}}


# ---------------------------------------------------------------------- CRUD and contract


@pytest.mark.parametrize("entity", ENTITIES)
async def test_crud_of_every_entity_over_http(api: httpx.AsyncClient, entity: str) -> None:
    base = f"/organizations/{ORG}/{entity}"
    body = dict(_valid_record(entity), id="ignored", organizationId="other",
                createdAt="2000-01-01T00:00:00Z")
    created = await api.post(base, json=body)
    assert created.status_code == 201 and created.headers["etag"] == '"1"'
    record = created.json()
    assert record["id"].startswith(record["id"].split("_")[0] + "_") and record["id"] != "ignored"
    assert record["organizationId"] == ORG and record["createdAt"] == record["updatedAt"]
    assert created.headers["location"] == f"{base}/{record['id']}"

    fetched = await api.get(f"{base}/{record['id']}")
    assert fetched.json() == record and fetched.headers["etag"] == '"1"'

    replacement = {**_valid_record(entity, 1), **_CHANGE[entity], "description": "to clear"}
    replaced = await api.put(f"{base}/{record['id']}", json=replacement)
    assert replaced.status_code == 200 and replaced.headers["etag"] == '"2"'
    after = replaced.json()
    assert {k: after[k] for k in replacement} == replacement
    assert after["createdAt"] == record["createdAt"] and after["updatedAt"] > record["updatedAt"]

    patched = await api.patch(f"{base}/{record['id']}", json={"description": None, "tags": ["x"]},
                              headers={"Content-Type": "application/merge-patch+json"})
    assert patched.status_code == 200 and patched.headers["etag"] == '"3"'
    assert "description" not in patched.json() and patched.json()["tags"] == ["x"]
    assert {k: patched.json()[k] for k in _CHANGE[entity]} == _CHANGE[entity]

    listed = (await api.get(base)).json()
    assert [item["id"] for item in listed["items"]] == [record["id"]]

    assert (await api.delete(f"{base}/{record['id']}")).status_code == 204
    assert (await api.get(f"{base}/{record['id']}")).status_code == 404
    assert (await api.delete(f"{base}/{record['id']}")).status_code == 404
    assert (await api.put(f"{base}/{record['id']}", json=replacement)).status_code == 404
    assert (await api.get(base)).json() == {"items": [], "nextCursor": None}


async def test_health_and_request_errors_are_problems(api: httpx.AsyncClient) -> None:
    assert (await api.get("/health")).json()["status"] == "ok"
    base = f"/organizations/{ORG}/account"
    cases = [
        (api.get(f"/organizations/{ORG}/invoices"), 404),          # plural: not an entity
        (api.get(f"{base}/acc_missing"), 404),
        (api.get(base, params={"limit": "0"}), 400),
        (api.get(base, params={"limit": "1001"}), 400),
        (api.get(base, params={"updatedSince": "yesterday"}), 400),
        (api.get(base, params={"updatedSince": "2025-03-01T23:00:00"}), 400),  # no offset
        (api.get(base, params={"cursor": "bm9wZQ"}), 400),
        (api.post(base, content=b"{not json"), 400),
        (api.post(base, content=b""), 400),
        (api.post(base, json={"name": "x"}, headers={"X-Sync-Origin": "bad origin!"}), 400),
        (api.get("/organizations/bad%20org/account"), 400),
        (api.put(base + "/acc_1", json=[1, 2]), 422),
    ]
    for request, status in cases:
        response = await request
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == status


async def test_validation_errors_are_422_with_every_pointer(api: httpx.AsyncClient) -> None:
    response = await api.post(f"/organizations/{ORG}/account", json={
        "name": "", "email": "not-an-email", "type": "alien", "bogus": 1,
        "addresses": [{"countryCode": "fr", "floor": 3}], "numberOfEmployees": -1})
    assert response.status_code == 422
    pointers = {e["pointer"]: e["detail"] for e in response.json()["errors"]}
    assert set(pointers) == {"/name", "/email", "/type", "/bogus", "/addresses/0/countryCode",
                             "/addresses/0/floor", "/numberOfEmployees"}
    assert all(detail for detail in pointers.values())

    missing = await api.post(f"/organizations/{ORG}/payment", json={"amount": 0})
    assert {e["pointer"] for e in missing.json()["errors"]} == {"/accountId", "/currency",
                                                               "/amount"}
    recurring = await api.post(f"/organizations/{ORG}/product",
                               json={"name": "Plan", "billingType": "recurring"})
    assert [e["pointer"] for e in recurring.json()["errors"]] == ["/billingPeriod"]

    created = (await api.post(f"/organizations/{ORG}/account", json={"name": "Ok"})).json()
    item = f"/organizations/{ORG}/account/{created['id']}"
    bad_patch = await api.patch(item, json={"name": None, "currency": "euro"})
    assert {e["pointer"] for e in bad_patch.json()["errors"]} == {"/name", "/currency"}
    other_id = await api.put(item, json={"id": "acc_other", "name": "Ok"})
    assert other_id.status_code == 422 and other_id.json()["errors"][0]["pointer"] == "/id"
    assert (await api.get(item)).headers["etag"] == '"1"'  # nothing was written


async def test_if_match_guards_every_write(api: httpx.AsyncClient) -> None:
    created = (await api.post(f"/organizations/{ORG}/case", json={"subject": "Hi"})).json()
    item = f"/organizations/{ORG}/case/{created['id']}"
    assert (await api.put(item, json={"subject": "v2"}, headers={"If-Match": '"1"'})
            ).headers["etag"] == '"2"'
    stale = await api.put(item, json={"subject": "v3"}, headers={"If-Match": '"1"'})
    assert stale.status_code == 412 and stale.headers["etag"] == '"2"'
    assert (await api.patch(item, json={"status": "open"}, headers={"If-Match": '"1"'})
            ).status_code == 412
    assert (await api.delete(item, headers={"If-Match": '"7"'})).status_code == 412
    assert (await api.get(item)).json()["subject"] == "v2"
    assert (await api.patch(item, json={"status": "open"}, headers={"If-Match": 'W/"2", "9"'})
            ).headers["etag"] == '"3"'
    assert (await api.delete(item, headers={"If-Match": "*"})).status_code == 204


async def test_idempotency_key_creates_once(api: httpx.AsyncClient, database_url: str,
                                            sandbox_schema: str) -> None:
    base = f"/organizations/{ORG}/contact"
    body = {"lastName": "Hopper"}
    answers = await asyncio.gather(*(
        api.post(base, json=body, headers={"Idempotency-Key": "msg-42"}) for _ in range(6)))
    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["id"] for a in answers}) == 1
    assert len({a.text for a in answers}) == 1
    other_entity = await api.post(f"/organizations/{ORG}/account", json={"name": "A"},
                                  headers={"Idempotency-Key": "msg-42"})
    assert other_entity.json()["id"] != answers[0].json()["id"]
    assert len((await api.get(base)).json()["items"]) == 1
    assert await _pending_outbox(database_url, sandbox_schema) == 2  # one event per record


async def test_the_bss_client_writes_as_the_puller_does(api: httpx.AsyncClient) -> None:
    """Creates keyed by Idempotency-Key, reads with the ETag, merge-patches and deletes
    guarded by If-Match: a stale ETag is a retryable ``BssConflict``."""
    async with BssClient(str(api.base_url)) as bss:
        first = await bss.create(ORG, "account", {"name": "Initech", "phone": "+1 555"},
                                 origin="acme-1", idempotency_key="pull-key-1")
        again = await bss.create(ORG, "account", {"name": "Initech", "phone": "+1 555"},
                                 origin="acme-1", idempotency_key="pull-key-1")
        assert again["id"] == first["id"]
        read = await bss.read(ORG, "account", first["id"])
        assert read is not None and read.etag == '"1"' and read.record["name"] == "Initech"
        patched = await bss.patch(ORG, "account", first["id"], {"name": "Initrode"},
                                  origin="acme-1", if_match=read.etag)
        assert patched is not None and patched.etag == '"2"'
        assert (patched.record["name"], patched.record["phone"]) == ("Initrode", "+1 555")
        with pytest.raises(BssConflict) as stale:
            await bss.patch(ORG, "account", first["id"], {"name": "Lost"}, origin="acme-1",
                            if_match=read.etag)
        assert stale.value.retryable and stale.value.http_status == 412
        with pytest.raises(BssConflict):
            await bss.delete(ORG, "account", first["id"], origin="acme-1", if_match='"1"')
        assert await bss.delete(ORG, "account", first["id"], origin="acme-1",
                                if_match=patched.etag)
        assert await bss.read(ORG, "account", first["id"]) is None
        assert await bss.patch(ORG, "account", first["id"], {"name": "x"},
                               origin="acme-1") is None
    listing = (await api.get(f"/organizations/{ORG}/account")).json()["items"]
    assert listing == []  # one record was ever created, and it is deleted


async def test_pagination_returns_each_changed_record_once_under_concurrent_writes(
        api: httpx.AsyncClient) -> None:
    base = f"/organizations/{ORG}/product"
    before = [(await api.post(base, json=_valid_record("product", i))).json() for i in range(5)]
    since = before[-1]["updatedAt"]  # inclusive: the last of these is listed, not the others
    existing = [(await api.post(base, json=_valid_record("product", i))).json()["id"]
                for i in range(60)]
    writing = asyncio.create_task(_create_many(api, base, 40))
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"updatedSince": since, "limit": "7", **({"cursor": cursor} if cursor else {})}
        page = (await api.get(base, params=params)).json()
        stamps = [(i["updatedAt"], i["id"]) for i in page["items"]]
        assert stamps == sorted(stamps)
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["nextCursor"]
        if cursor is None:
            break
        await asyncio.sleep(0.005)  # not a wait: paces the pages so that writes land between
    written = await writing
    counts = Counter(seen)
    assert all(counts[i] == 1 for i in existing), "a record was skipped or listed twice"
    assert max(counts.values()) == 1
    assert before[-1]["id"] in counts and not any(b["id"] in counts for b in before[:-1])
    assert set(counts) <= {before[-1]["id"], *existing, *written}
    assert pages >= 9


async def test_listing_by_ids_gives_the_live_ones_and_the_bss_client_batches_on_it(
        api: httpx.AsyncClient) -> None:
    base = f"/organizations/{ORG}/account"
    ids = [(await api.post(base, json=_valid_record("account", i))).json()["id"]
           for i in range(6)]
    await api.delete(f"{base}/{ids[5]}")
    page = (await api.get(base, params={"id": [*ids, "no-such-id", ids[0]]})).json()
    assert sorted(item["id"] for item in page["items"]) == sorted(ids[:5])  # each once
    assert page["nextCursor"] is None
    assert (await api.get(base, params={"id": [f"x{n}" for n in range(101)]})).status_code == 400
    assert (await api.get(base, params={"id": ids[0], "cursor": "abc"})).status_code == 400

    async with BssClient(str(api.base_url)) as bss:
        records = await asyncio.gather(*(bss.get(ORG, "account", i)
                                         for i in [*ids, "no-such-id", ids[0]]))
        assert [r["id"] if r else None for r in records] == [*ids[:5], None, None, ids[0]]
        assert bss._reads.batches == 1 and bss.batch_reads  # one listing served all eight


async def test_a_bss_ignoring_the_id_filter_is_read_one_by_one() -> None:
    """A BSS whose listing ignores ``id`` (it answers every record) is noticed, never
    trusted, and read record by record from then on."""
    records = {f"r{n}": {"id": f"r{n}", "name": f"R{n}"} for n in range(4)}
    requests: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ")[1].decode()
                requests.append(target)
                path = target.split("?")[0]
                last = path.rsplit("/", 1)[1]
                if last == "account":  # the listing, filter ignored
                    status, body = 200, {"items": list(records.values()), "nextCursor": None}
                elif last in records:
                    status, body = 200, records[last]
                else:
                    status, body = 404, {"title": "not found", "status": 404}
                data = json.dumps(body).encode()
                writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (status, len(data), data))
                await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with BssClient(f"http://127.0.0.1:{port}") as bss:
            got = await asyncio.gather(*(bss.get(ORG, "account", i) for i in ("r1", "r2", "gone")))
            assert [g["id"] if g else None for g in got] == ["r1", "r2", None]
            assert not bss.batch_reads
            assert await bss.get(ORG, "account", "r3") == records["r3"]
    finally:
        server.close()
    assert sum("?" in r for r in requests) == 1  # one listing tried, then single reads
    assert requests[-1].endswith("/account/r3")


async def _create_many(api: httpx.AsyncClient, base: str, count: int) -> list[str]:
    ids = []
    for i in range(count):
        ids.append((await api.post(base, json=_valid_record("product", 100 + i))).json()["id"])
        await asyncio.sleep(0.002)  # not a wait: paces the writes across the listing's pages
    return ids


async def test_bearer_token_is_required_when_configured(database_url: str, sandbox_schema: str,
                                                        contract: Contract) -> None:
    settings = _settings(database_url, sandbox_schema, "amqp://unused/", relay_enabled=False,
                         token="s3cret-token")
    with SandboxServer(settings, mode="thread") as server:
        async with _client(server, contract) as client:
            assert (await client.get("/health")).status_code == 200
            refused = await client.get(f"/organizations/{ORG}/account")
            assert refused.status_code == 401 and "bearer" in refused.json()["detail"]
            wrong = await client.post(f"/organizations/{ORG}/account", json={"name": "A"},
                                      headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            ok = await client.get(f"/organizations/{ORG}/account",
                                  headers={"Authorization": "Bearer s3cret-token"})
            assert ok.status_code == 200


# ---------------------------------------------------------------------- events


@pytest.fixture
def tap(topology: Any) -> Iterator[EventTap]:
    events = EventTap(topology.url)
    yield events
    events.close()


async def test_writes_publish_events_with_their_origin(
        database_url: str, sandbox_schema: str, topology: Any, tap: EventTap,
        contract: Contract) -> None:
    settings = _settings(database_url, sandbox_schema, topology.url)
    with SandboxServer(settings, mode="thread") as server:
        async with _client(server, contract) as api:
            base = f"/organizations/{ORG}/account"
            origin = {"X-Sync-Origin": "inst-1"}
            record = (await api.post(base, json={"name": "A"}, headers=origin)).json()
            item = f"{base}/{record['id']}"
            updated = (await api.put(item, json={"name": "B", "status": "active"},
                                     headers=origin)).json()
            await api.patch(item, json={"status": "closed"})
            last = (await api.get(item)).json()
            await api.delete(item, headers=origin)
            events = await tap.wait_for(4)
    event_check = validator("bss-event")
    for event in events:
        _assert_valid(event_check, event)
    assert tap.routing_keys == ["account.created", "account.updated", "account.updated",
                                "account.deleted"]
    assert [e["origin"] for e in events] == ["inst-1", "inst-1", None, "inst-1"]
    assert {e["recordId"] for e in events} == {record["id"]}
    assert {e["organizationId"] for e in events} == {ORG}
    assert events[0]["data"] == record and events[0]["occurredAt"] == record["updatedAt"]
    assert set(events[0]) == set(events[3])  # the create's, built in SQL, as entity_event's
    assert events[1]["data"] == updated and events[1]["changedFields"] == ["name", "status"]
    assert events[2]["changedFields"] == ["status"]
    assert events[3]["data"] == last and events[3]["occurredAt"] > last["updatedAt"]
    assert tap.message_ids == [e["id"] for e in events] and len(set(tap.message_ids)) == 4
    assert await _pending_outbox(database_url, sandbox_schema) == 0


def _through(proxy: TcpProxy, amqp_url: str) -> str:
    """``amqp_url`` with ``proxy`` in front of its broker."""
    parts = AmqpUrl.parse(amqp_url)
    return dataclasses.replace(parts, host="127.0.0.1", port=proxy.port).with_vhost(parts.vhost)


@pytest.fixture
def network() -> Iterator[NetworkLoop]:
    loop = NetworkLoop()
    yield loop
    loop.close()


async def test_changes_made_while_rabbitmq_is_unreachable_are_published_when_it_returns(
        database_url: str, sandbox_schema: str, topology: Any, tap: EventTap,
        contract: Contract, network: NetworkLoop) -> None:
    broker = AmqpUrl.parse(topology.url)
    proxy = TcpProxy(network, broker.host, broker.port).start()
    settings = _settings(database_url, sandbox_schema, _through(proxy, topology.url))
    try:
        with SandboxServer(settings, mode="thread") as server:
            async with _client(server, contract) as api:
                base = f"/organizations/{ORG}/order"
                first = (await api.post(base, json=_valid_record("order"))).json()
                await tap.wait_for(1)
                # The relay marks the row after the broker's confirm, which may come a
                # moment after the tap saw the event: only then is the first one settled.
                await _until_outbox_empty(database_url, sandbox_schema)
                proxy.refuse()  # the broker is gone: connections dropped, new ones refused
                during = [(await api.post(base, json=_valid_record("order", i))).json()["id"]
                          for i in range(25)]
                await api.put(f"{base}/{first['id']}", json=_valid_record("order", 99))
                # the relay tries, fails, backs off: two attempts after the writes make
                # one whole round that had the 26 events waiting
                await _relay_attempts(proxy, 2)
                assert tap.drain() == 1
                assert await _pending_outbox(database_url, sandbox_schema) == 26
                health = (await api.get("/health")).json()
                assert health["relay"] == "retrying"
                proxy.accept()
                events = await tap.wait_for(27)
                published = await tap.everything(database_url, sandbox_schema)
                assert published == 27, "an event was published twice"
    finally:
        proxy.stop()
    assert [e["recordId"] for e in events[1:26]] == during
    assert tap.routing_keys[26] == "order.updated" and events[26]["recordId"] == first["id"]
    assert len({e["id"] for e in events}) == 27
    assert await _pending_outbox(database_url, sandbox_schema) == 0


async def _until_outbox_empty(database_url: str, schema: str) -> None:
    async def empty() -> bool:
        return await _pending_outbox(database_url, schema) == 0
    await eventually(empty, timeout=30, what="every outbox row marked published")


async def _relay_attempts(proxy: TcpProxy, count: int) -> None:
    """Until the relay has tried to connect ``count`` more times through ``proxy``."""
    start = proxy.attempts
    await eventually(lambda: proxy.attempts >= start + count, timeout=60,
                     what=f"{count} more connection attempts by the relay")


async def test_changes_wait_in_the_outbox_until_the_vhost_exists(
        database_url: str, sandbox_schema: str, rabbitmq: Any, contract: Contract,
        network: NetworkLoop) -> None:
    vhost = f"sandbox-late-{secrets.token_hex(3)}"
    late_url = rabbitmq.url_for(vhost)
    broker = AmqpUrl.parse(late_url)
    # only to count the relay's attempts
    proxy = TcpProxy(network, broker.host, broker.port).start()
    settings = _settings(database_url, sandbox_schema, _through(proxy, late_url))
    management = rabbitmq.management(vhost)
    try:
        with SandboxServer(settings, mode="thread") as server:
            async with _client(server, contract) as api:
                ids = [(await api.post(f"/organizations/{ORG}/case",
                                       json=_valid_record("case", i))).json()["id"]
                       for i in range(3)]
                await _relay_attempts(proxy, 2)  # tried, refused by the broker, backed off
                assert await _pending_outbox(database_url, sandbox_schema) == 3
                management.create_vhost(vhost)
                tap = EventTap(late_url)
                try:
                    events = await tap.wait_for(3)
                finally:
                    tap.close()
    finally:
        proxy.stop()
        management.delete_vhost(vhost)
        management.close()
    assert [e["recordId"] for e in events] == ids
    assert await _pending_outbox(database_url, sandbox_schema) == 0


# ---------------------------------------------------------------------- seed


def _seed(database_url: str, schema: str, org: str, count: int, *extra: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "sandbox", "seed", "--org", org, "--count", str(count),
         "--schema", schema, "--database-url", database_url, *extra],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_seed_creates_valid_connected_records_and_their_events(
        database_url: str, sandbox_schema: str, topology: Any, tap: EventTap,
        contract: Contract) -> None:
    count = 4
    output = _seed(database_url, sandbox_schema, ORG, count, "--seed", "7")
    assert "created 4 product, 4 account" in output
    settings = _settings(database_url, sandbox_schema, topology.url)
    # Real processes, as in the demo; two workers, of which only one may relay.
    with SandboxServer(settings, workers=2) as server:
        async with _client(server, contract) as api:
            records = {e: (await api.get(f"/organizations/{ORG}/{e}")).json()["items"]
                       for e in ENTITIES}
            events = await tap.wait_for(count * len(ENTITIES))
            published = await tap.everything(database_url, sandbox_schema)
            assert published == count * len(ENTITIES), "an event was published twice"
    assert {e: len(items) for e, items in records.items()} == dict.fromkeys(ENTITIES, count)
    assert Counter(tap.routing_keys) == {f"{e}.created": count for e in ENTITIES}
    assert {e["origin"] for e in events} == {None}
    _assert_references(records)


def _assert_references(records: dict[str, list[dict[str, Any]]]) -> None:
    ids = {entity: {r["id"] for r in items} for entity, items in records.items()}
    assert all(c["accountId"] in ids["account"] for c in records["contact"])
    for document in records["order"] + records["invoice"]:
        assert document["accountId"] in ids["account"]
        lines = document["lines"]
        assert all(line["productId"] in ids["product"] for line in lines)
        for line in lines:
            gross = Decimal(str(line["quantity"])) * Decimal(str(line["unitPrice"]))
            net = gross * (1 - Decimal(str(line.get("discount") or 0)) / 100)
            assert abs(net - Decimal(str(line["total"]))) <= Decimal("0.005")
        subtotal = sum(Decimal(str(line["total"])) for line in lines)
        assert Decimal(str(document["subtotal"])) == subtotal
        assert Decimal(str(document["tax"])) == sum(Decimal(str(line["tax"])) for line in lines)
    for invoice in records["invoice"]:
        total = Decimal(str(invoice["total"]))
        assert total == Decimal(str(invoice["subtotal"])) + Decimal(str(invoice["tax"]))
        assert Decimal(str(invoice["balance"])) == total - Decimal(str(invoice["amountPaid"]))
    assert all(p["invoiceId"] in ids["invoice"] and p["accountId"] in ids["account"]
               for p in records["payment"])
    assert all(s["accountId"] in ids["account"] and s["productId"] in ids["product"]
               for s in records["subscription"])
    assert all(c["accountId"] in ids["account"] and c.get("contactId") in ids["contact"] | {None}
               for c in records["case"])
    countries = {a["countryCode"] for acc in records["account"] for a in acc["addresses"]}
    assert countries and all(len(code) == 2 for code in countries)


async def test_seed_is_deterministic_with_a_seed(database_url: str, sandbox_schema: str,
                                                 contract: Contract) -> None:
    for org in ("org-a", "org-b"):
        _seed(database_url, sandbox_schema, org, 3, "--seed", "11",
              "--entities", "account,product,invoice")
    settings = _settings(database_url, sandbox_schema, "amqp://unused/", relay_enabled=False)
    with SandboxServer(settings, mode="thread") as server:
        async with _client(server, contract) as api:
            contents = {}
            for org in ("org-a", "org-b"):
                contents[org] = {e: sorted(_content(r) for r in (await api.get(
                    f"/organizations/{org}/{e}")).json()["items"])
                    for e in ("account", "product", "invoice")}
            assert (await api.get("/organizations/org-a/contact")).json()["items"] == []
    assert contents["org-a"] == contents["org-b"]
    assert len(contents["org-a"]["invoice"]) == 3


def _content(record: dict[str, Any]) -> str:
    """A record without what differs between runs: ids, references and timestamps."""
    text = json.dumps({k: v for k, v in record.items()
                       if k not in ("id", "organizationId", "createdAt", "updatedAt")},
                      sort_keys=True)
    return re.sub(r'"(acc|prd|con|ord|inv)_[0-9A-Z]{26}"', '"<id>"', text)


async def test_seeded_account_codes_stay_unique_across_runs_and_hand_made_records(
        database_url: str, sandbox_schema: str) -> None:
    from sandbox.factory import account_code
    from sandbox.migration import migrate
    from sandbox.seed import seed_organization
    from sandbox.store import RecordStore, Write
    from shared.storage.db import Database

    async with Database(database_url, sandbox_schema, max_size=2) as db:
        await migrate(db, sandbox_schema)
        store = RecordStore(db)
        await seed_organization(store, ORG, 40, entities=["account"], seed=3)
        # A record made through the API holding the code the next run would pick first.
        await store.create(Write(ORG, "account"), {"name": "By hand", "code": account_code(40)})
        await seed_organization(store, ORG, 40, entities=["account"], seed=3)
        rows = await db.fetch("SELECT data->>'code' AS code FROM records"
                              " WHERE org_id = %s AND entity = 'account'", (ORG,))
    codes = Counter(row["code"] for row in rows)
    assert sum(codes.values()) == 81
    assert [code for code, n in codes.items() if n > 1] == []


def test_seed_refuses_children_without_parents(database_url: str, sandbox_schema: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sandbox", "seed", "--org", "lonely", "--count", "2",
         "--entities", "invoice", "--schema", sandbox_schema, "--database-url", database_url],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "invoice records need accounts" in result.stderr
    assert "Traceback" not in result.stderr


def test_contract_was_exercised(contract: Contract) -> None:
    """Runs last in this module: the tests above met every operation of the contract."""
    operations = {key.split()[0] for key in contract.checked}
    if len(operations) > 1:  # the whole module ran (not a single test selected)
        assert operations >= {"health", "listRecords", "createRecord", "getRecord",
                              "updateRecord", "patchRecord", "deleteRecord"}


# ---------------------------------------------------------------------- pure pieces


def test_merge_patch_follows_rfc_7396() -> None:
    from sandbox.records import merge_patch

    examples = [  # RFC 7396 appendix A
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ]
    for target, patch, expected in examples:
        assert merge_patch(target, patch) == expected


def test_cursors_etags_and_ids() -> None:
    from datetime import UTC, datetime

    from sandbox.records import decode_cursor, encode_cursor, if_match_allows, new_id

    moment = datetime(2025, 3, 1, 23, 0, 0, 123456, tzinfo=UTC)
    assert decode_cursor(encode_cursor(moment, "acc_1|x")) == (moment, "acc_1|x")
    for bad in ("", "!!!", "bm9wZQ", encode_cursor(moment, "x")[:-4]):
        with pytest.raises(ValueError):
            decode_cursor(bad)
    assert if_match_allows(None, 3) and if_match_allows("*", 3)
    assert if_match_allows('"1", W/"3"', 3) and not if_match_allows('"2"', 3)
    first, second = new_id("invoice"), new_id("invoice")
    assert first.startswith("inv_") and len(first) == 30 and first != second


def test_settings_round_trip_through_the_environment() -> None:
    settings = SandboxSettings(schema="sandbox_x", relay_enabled=False, token="t0ken",
                               poll_interval=0.25, pool_max=3)
    assert SandboxSettings.from_env(settings.to_env()) == settings
    fallback = SandboxSettings.from_env({"DATABASE_URL": "postgresql://db/x",
                                         "SANDBOX_RELAY_ENABLED": "off"})
    assert fallback.database_url == "postgresql://db/x" and not fallback.relay_enabled
    with pytest.raises(ValueError):
        SandboxSettings(schema="Bad-Schema")


async def test_reads_by_id_use_the_primary_key_on_a_table_without_statistics(
        database_url: str, sandbox_schema: str) -> None:
    """A freshly loaded, never analyzed ``records`` table (autovacuum off, as on this
    machine): every read by id still goes through the primary key — never the partial
    ``records_changed`` index, which walks the whole collection to find one id."""
    from datetime import UTC, datetime

    from psycopg.rows import tuple_row

    from sandbox import store
    from sandbox.migration import migrate
    from shared.storage.db import Database

    async with Database(database_url, sandbox_schema, max_size=2) as db:
        await migrate(db, sandbox_schema)
        await db.execute("ALTER TABLE records SET (autovacuum_enabled = false)")
        await db.execute(
            "INSERT INTO records (org_id, entity, id, data, created_at, updated_at)"
            " SELECT %s, 'account', 'acc_' || g, jsonb_build_object('name', 'n' || g,"
            " 'pad', repeat('x', 500)), now(), now() FROM generate_series(1, 5000) AS g",
            (ORG,))
        plans = {}
        for name, sql, params in (
                ("get", store._GET, (ORG, "account", "acc_2500")),
                ("lock", store._LOCK, (ORG, "account", "acc_2500")),
                ("list_ids", store._LIST_IDS, ([f"acc_{n}" for n in range(1, 5000, 50)],
                                               ORG, "account",
                                               datetime(2000, 1, 1, tzinfo=UTC)))):
            async with db.transaction() as conn:
                cur = conn.cursor(row_factory=tuple_row)
                await cur.execute("EXPLAIN (FORMAT JSON) " + sql, params)
                row = await cur.fetchone()
                assert row is not None
                plans[name] = json.dumps(row[0])
    for name, plan in plans.items():
        assert '"Index Name": "records_pkey"' in plan, f"{name}: {plan}"
        assert "records_changed" not in plan, f"{name}: {plan}"


async def test_records_are_analyzed_after_a_burst_of_writes_and_after_a_seed(
        database_url: str, sandbox_schema: str) -> None:
    """Planner statistics do not wait for autovacuum: the store analyzes ``records`` in
    the background once a burst of writes passes the threshold, and the seed before it
    returns (``pg_class.reltuples`` is -1 until a table is first analyzed)."""
    from sandbox.migration import migrate
    from sandbox.seed import seed_organization
    from sandbox.statistics import RecordStatistics
    from sandbox.store import RecordStore, Write
    from shared.storage.db import Database

    async with Database(database_url, sandbox_schema, max_size=3) as db:
        await migrate(db, sandbox_schema)
        await db.execute("ALTER TABLE records SET (autovacuum_enabled = false)")

        async def counted() -> float:
            return await db.fetchval(
                "SELECT reltuples FROM pg_class WHERE oid = 'records'::regclass")

        store = RecordStore(db, RecordStatistics(db, after=20))
        for i in range(19):
            await store.create(Write(ORG, "account"), {"name": f"Burst {i}"})
        await asyncio.sleep(0.2)
        assert await counted() == -1  # below the threshold: not analyzed
        await store.create(Write(ORG, "account"), {"name": "Burst 19"})
        deadline = time.monotonic() + 10
        while await counted() != 20:
            assert time.monotonic() < deadline, "records not analyzed after the burst"
            await asyncio.sleep(0.05)
        await store.statistics.close()

        quiet = RecordStore(db, RecordStatistics(db, after=0))  # counts nothing itself
        await seed_organization(quiet, ORG, 30, entities=["account"], seed=5)
        assert await counted() == 50


async def test_concurrent_creates_share_a_statement_and_a_bad_one_fails_alone(
        database_url: str, sandbox_schema: str) -> None:
    """Creates in flight together go to PostgreSQL as one statement. One of them holding
    what PostgreSQL cannot store (a NUL character) fails alone with the reason; two with
    the same idempotency key make one record and answer the same; every record made has
    its one event."""
    from sandbox.migration import migrate
    from sandbox.store import InvalidRecord, RecordStore, Write
    from shared.storage.db import Database

    async with Database(database_url, sandbox_schema, max_size=2) as db:
        await migrate(db, sandbox_schema)
        store = RecordStore(db)
        write = Write(ORG, "account", origin="inst-1")
        bodies = [{"name": f"Batch {i}"} for i in range(30)]
        bodies[7] = {"name": "Nul\x00 Corp"}
        results = await asyncio.gather(
            *(store.create(write, b) for b in bodies),
            store.create(write, {"name": "Keyed"}, idempotency_key="k-1"),
            store.create(write, {"name": "Keyed"}, idempotency_key="k-1"),
            return_exceptions=True)
        assert store._creates.batches < len(results), "the creates did not share a statement"
        bad = results[7]
        assert isinstance(bad, InvalidRecord)
        assert "PostgreSQL cannot store this record" in bad.problems[0].detail
        made = [r for i, r in enumerate(results[:30]) if i != 7]
        assert all(not isinstance(r, BaseException) for r in made)
        first, again = results[30], results[31]
        assert not isinstance(first, BaseException) and not isinstance(again, BaseException)
        assert (first.id, first.text, first.version) == (again.id, again.text, again.version)
        rows = await db.fetch("SELECT id FROM records WHERE org_id = %s AND entity = 'account'",
                              (ORG,))
        assert sorted(r["id"] for r in rows) == sorted([r.id for r in made] + [first.id])
        events = await db.fetch("SELECT body FROM outbox ORDER BY id")
        assert sorted(e["body"]["recordId"] for e in events) == sorted(r["id"] for r in rows)
        assert {e["body"]["origin"] for e in events} == {"inst-1"}
        assert all(e["body"]["data"] == json.loads(r.text) for e, r in zip(
            sorted(events, key=lambda e: e["body"]["recordId"]),
            sorted([*made, first], key=lambda r: r.id), strict=True))


async def test_concurrent_patches_share_statements_and_each_gets_its_own_answer(
        database_url: str, sandbox_schema: str) -> None:
    """Merge patches in flight together are read and written as one batch, each with its
    own answer: applied (with its one event and its changed fields), both of two patches
    of one record without If-Match applied, one of two with the same If-Match refused
    with the record's real ETag, a missing record, a patch that breaks the schema, one
    holding what PostgreSQL cannot store — each refused alone."""
    from sandbox.migration import migrate
    from sandbox.store import (
        InvalidRecord,
        PreconditionFailed,
        RecordNotFound,
        RecordStore,
        StoredRecord,
        Write,
    )
    from shared.storage.db import Database

    async with Database(database_url, sandbox_schema, max_size=2) as db:
        await migrate(db, sandbox_schema)
        store = RecordStore(db)
        write = Write(ORG, "account", origin="inst-1")
        records = [await store.create(write, {"name": f"Patch {i}"}) for i in range(24)]
        ids = [r.id for r in records]
        await db.execute("DELETE FROM outbox")
        batches = store._patches.batches
        results = await asyncio.gather(
            *(store.patch(write, i, {"phone": f"+1 555 {n:04d}"}) for n, i in enumerate(ids[:20])),
            store.patch(write, ids[20], {"phone": "+1 1"}),
            store.patch(write, ids[20], {"fax": "+1 2"}),
            store.patch(write, ids[21], {"phone": "+1 3"}, if_match='"1"'),
            store.patch(write, ids[21], {"fax": "+1 4"}, if_match='"1"'),
            store.patch(write, "acc_missing", {"phone": "+1 5"}),
            store.patch(write, ids[22], {"name": 5}),
            store.patch(write, ids[23], {"phone": "nul\x00"}),
            return_exceptions=True)
        assert store._patches.batches - batches < len(results), "no batch was shared"
        applied = results[:20]
        assert all(isinstance(r, StoredRecord) and r.version == 2 for r in applied)
        assert [json.loads(r.text)["phone"] for r in applied] == [
            f"+1 555 {n:04d}" for n in range(20)]
        twice = json.loads((await store.get(ORG, "account", ids[20])).text)
        assert (twice["phone"], twice["fax"]) == ("+1 1", "+1 2")
        guarded = results[22:24]
        assert sorted(type(r).__name__ for r in guarded) == ["PreconditionFailed",
                                                             "StoredRecord"]
        refused = next(r for r in guarded if isinstance(r, PreconditionFailed))
        assert refused.current_etag == (await store.get(ORG, "account", ids[21])).etag == '"2"'
        assert isinstance(results[24], RecordNotFound)
        assert isinstance(results[25], InvalidRecord)
        assert isinstance(results[26], InvalidRecord)
        assert "PostgreSQL cannot store" in results[26].problems[0].detail
        events = await db.fetch("SELECT body FROM outbox ORDER BY id")
        assert Counter(e["body"]["recordId"] for e in events) == Counter(
            [*ids[:20], ids[20], ids[20], ids[21]])
        assert {e["body"]["event"] for e in events} == {"updated"}
        by_id = {e["body"]["recordId"]: e["body"] for e in events}
        assert by_id[ids[0]]["changedFields"] == ["phone"]
        assert by_id[ids[0]]["data"] == json.loads(applied[0].text)
        assert by_id[ids[0]]["origin"] == "inst-1"


async def test_a_patch_on_a_record_that_keeps_changing_waits_for_its_lock(
        database_url: str, sandbox_schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the optimistic rounds (none here) a patch is written under the record's
    lock, with the same answer and the same event as any other: its If-Match checked,
    its changed fields in the event."""
    import sandbox.store
    from sandbox.migration import migrate
    from sandbox.store import PreconditionFailed, RecordStore, Write
    from shared.storage.db import Database

    monkeypatch.setattr(sandbox.store, "MAX_PATCH_ROUNDS", 0)
    async with Database(database_url, sandbox_schema, max_size=2) as db:
        await migrate(db, sandbox_schema)
        store = RecordStore(db)
        write = Write(ORG, "account", origin="inst-1")
        record = await store.create(write, {"name": "Locked"})
        await db.execute("DELETE FROM outbox")
        patched = await store.patch(write, record.id, {"phone": "+1 9"}, if_match='"1"')
        assert (patched.version, json.loads(patched.text)["phone"]) == (2, "+1 9")
        with pytest.raises(PreconditionFailed):
            await store.patch(write, record.id, {"phone": "+1 8"}, if_match='"1"')
        [event] = await db.fetch("SELECT body FROM outbox")
        assert (event["body"]["event"], event["body"]["changedFields"]) == ("updated",
                                                                            ["phone"])
        assert event["body"]["data"] == json.loads(patched.text)
