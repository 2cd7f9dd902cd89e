"""The hand-written fast paths beside the libraries they stand in for: same inputs, same
process, alternating rounds (the median of each printed). Prints figures, asserts nothing.

    .venv/bin/python bench/fastpaths.py [--parts schemas,transform,http] [--rounds 5]

(1) schema checks, per message: the check of one parsed sync envelope, and of one
    parsed BSS event (JSON parsing excluded) — the hand-written check with jsonschema
    for what it refuses (``SCHEMA_CHECKS=fast``) against jsonschema alone
    (``SCHEMA_CHECKS=jsonschema``); and a sync envelope from body to message, the typed
    parse against orjson with either check;
(2) transforms, per record: bench/transform.py's 20-field account mapping, compiled with
    ``TRANSFORM_PATHS=fast`` and with ``jsonata``; and per evaluation, the filtered path
    ``addresses[isBilling][0].city`` alone;
(3) HTTP, per request: ``BssClient.get_one`` (``fetch``, through an ``httpx.Request``)
    and ``ThirdPartyClient.send`` (``fetch_raw``) with ``HTTP_TRANSPORT=fast`` and
    ``httpx``, 1 and 16 requests in flight, against a minimal keep-alive server in a
    child process that answers every request with the same 1.6 KB account: this
    process's CPU per request (the server's excluded) and requests per second. The
    client runs on the services' event loop (``EVENT_LOOP``, uvloop by default).

Only what succeeded is counted: a check that refuses, a payload that differs between
the two, or an answer that is not the expected 200 stops the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.dispatcher.events import EVENT_RULES_SHA256
from services.dispatcher.events import conforms as event_conforms
from shared.bss import BssClient
from shared.connector import load_connector
from shared.connector.request import RequestPlan
from shared.http import InstanceEndpoint, ThirdPartyClient
from shared.ids import new_message_id
from shared.messaging.envelope import (
    ENVELOPE_RULES_SHA256,
    SyncMessage,
    decode_checked,
    encode,
)
from shared.messaging.envelope import _decode_fast as decode_fast
from shared.messaging.envelope import conforms as envelope_conforms
from shared.messaging.runner import run_loop
from shared.schema_check import PinnedSchemaCheck
from shared.settings import Settings, get_settings
from shared.transform import (
    UNDEFINED,
    LookupTable,
    PreloadedLinks,
    Transform,
    TransformContext,
    build_transform,
)
from shared.transform.expressions import Expression

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from transform import MAPPING  # noqa: E402  (bench/transform.py's mapping)

ACCOUNT = json.loads((ROOT / "tests" / "data" / "entities" / "account.json").read_text())


def median_rounds(rounds: int, variants: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Run each variant ``rounds`` times, alternating; the median of each."""
    seen: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            seen[name].append(run())
    return {name: statistics.median(values) for name, values in seen.items()}


def per_item(function: Callable[[Any], Any], items: list[Any], repeat: int) -> float:
    """CPU microseconds per call of ``function`` over ``items``, ``repeat`` passes (CPU
    time, not wall time: the machine's neighbours move it less)."""
    started = time.process_time()
    for _ in range(repeat):
        for item in items:
            function(item)
    return (time.process_time() - started) / (repeat * len(items)) * 1e6


def side_by_side(title: str, unit: str, figures: dict[str, float]) -> None:
    (fast_name, fast), (library_name, library) = figures.items()
    print(f"  {title}: {library_name} {library:,.1f} {unit}, {fast_name} {fast:,.1f} {unit}"
          f" ({library / fast:.1f}x)")


# -- (1) schema checks --------------------------------------------------------------------


def envelopes(count: int) -> list[dict[str, Any]]:
    created = datetime.now(UTC).isoformat()
    return [SyncMessage(id=new_message_id(), direction="push", org_id="acme-telecom",
                        instance_id=f"crm-{i % 4}", entity="account", action="update",
                        trigger="event", attempt=i % 3, created_at=created,
                        record_id=f"acc_{i:08d}", correlation_id=str(uuid.uuid4())).to_dict()
            for i in range(count)]


def events(count: int) -> list[dict[str, Any]]:
    return [{"id": str(uuid.uuid4()), "entity": "account", "event": "updated",
             "organizationId": "acme-telecom", "recordId": f"acc_{i:08d}",
             "occurredAt": "2026-11-28T10:00:00.123456Z", "origin": None,
             "changedFields": ["name", "phone"], "data": {"name": f"Account {i}"}}
            for i in range(count)]


def bench_schemas(args: argparse.Namespace) -> None:
    print("(1) schema checks — CPU µs per message: the check of one parsed document "
          "(JSON parsing excluded)")
    cases = [("sync envelope", "sync-message", envelope_conforms, ENVELOPE_RULES_SHA256,
              True, envelopes(args.messages), "the envelope"),
             ("BSS event", "bss-event", event_conforms, EVENT_RULES_SHA256, False,
              events(args.messages), "the event")]
    for title, name, fast, pin, formats, documents, subject in cases:
        checks = {
            "fast check": PinnedSchemaCheck(name, fast, pin, subject=subject,
                                            formats=formats, fast_enabled=True),
            "jsonschema": PinnedSchemaCheck(name, fast, pin, subject=subject,
                                            formats=formats, fast_enabled=False),
        }
        for check in checks.values():
            for document in documents:
                check.check(document)  # every one valid (raises otherwise); warms up
        figures = median_rounds(args.rounds, {
            label: (lambda c=check, d=documents: per_item(c.check, d, 3))
            for label, check in checks.items()})
        side_by_side(f"{title} ({len(documents):,} distinct, x3 per round)", "µs", figures)
    bench_envelope_decode(args)


def bench_envelope_decode(args: argparse.Namespace) -> None:
    """A sync envelope from its body to the message, as the consumer decodes each one: the
    typed parse (msgspec, schema-derived types) against the long way it falls back to —
    orjson, then the hand-written check — and orjson with jsonschema alone."""
    bodies = [encode(SyncMessage(**doc)) for doc in envelopes(args.messages)]

    def long_way(check: PinnedSchemaCheck) -> Callable[[bytes], SyncMessage]:
        return lambda body: decode_checked(body, check)

    decoders: dict[str, Callable[[bytes], SyncMessage | None]] = {
        "typed parse": decode_fast,
        "orjson + fast check": long_way(PinnedSchemaCheck(
            "sync-message", envelope_conforms, ENVELOPE_RULES_SHA256, subject="the envelope",
            formats=True, fast_enabled=True)),
        "orjson + jsonschema": long_way(PinnedSchemaCheck(
            "sync-message", envelope_conforms, ENVELOPE_RULES_SHA256, subject="the envelope",
            formats=True, fast_enabled=False)),
    }
    for body in bodies:  # every one read alike by all three (warms up too)
        if len({repr(decode(body)) for decode in decoders.values()}) != 1:
            raise SystemExit("the decoders disagree on an envelope: no figure")
    figures = median_rounds(args.rounds, {
        label: (lambda f=f: per_item(f, bodies, 3)) for label, f in decoders.items()})
    typed, fast, library = figures.values()
    print(f"  sync envelope, body → message ({len(bodies):,} distinct, x3 per round): "
          f"orjson + jsonschema {library:,.1f} µs, orjson + fast check {fast:,.1f} µs, "
          f"typed parse {typed:,.1f} µs ({fast / typed:.1f}x the fast check)")


# -- (2) transforms -----------------------------------------------------------------------


def compiled(paths: str, build: Callable[[], Any]) -> Any:
    """``build()`` with ``TRANSFORM_PATHS=paths``, as a process started with it would."""
    before = os.environ.get("TRANSFORM_PATHS")
    os.environ["TRANSFORM_PATHS"] = paths
    get_settings.cache_clear()
    try:
        return build()
    finally:
        if before is None:
            del os.environ["TRANSFORM_PATHS"]
        else:
            os.environ["TRANSFORM_PATHS"] = before
        get_settings.cache_clear()


def bench_transform(args: argparse.Namespace) -> None:
    print("(2) transforms — CPU µs per record (20-field account mapping: 12 plain paths, "
          "4 filtered paths, 2 lookups, $lowercase, $externalId) and per evaluation")
    context = TransformContext(
        lookups={"industry": LookupTable("industry", {"Transportation": "LOGISTICS"}),
                 "accountType": LookupTable("accountType", {"customer": "CUSTOMER"})},
        links=PreloadedLinks(external={("account", ACCOUNT["parentAccountId"]): "1001"}))
    records = [{**ACCOUNT, "id": f"acc-{i}", "name": f"{ACCOUNT['name']} {i}"}
               for i in range(1000)]
    transforms: dict[str, Transform] = {
        "fast paths": compiled("fast", lambda: build_transform("AccountToCompany", MAPPING)),
        "jsonata": compiled("jsonata", lambda: build_transform("AccountToCompany", MAPPING)),
    }
    payloads = [[t.apply(r, context) for r in records[:50]] for t in transforms.values()]
    if payloads[0] != payloads[1]:
        raise SystemExit("the two transforms disagree: no figure")
    repeat = max(1, args.records // len(records))
    figures = median_rounds(args.rounds, {
        label: (lambda t=t: per_item(lambda r: t.apply(r, context), records, repeat))
        for label, t in transforms.items()})
    side_by_side(f"account mapping ({repeat * len(records):,} records per round)", "µs",
                 figures)
    path = "addresses[isBilling][0].city"
    expressions = {"fast path": Expression(path, fast=True),
                   "jsonata": Expression(path, fast=False)}
    answers = {e.evaluate(records[0]) for e in expressions.values()}
    if len(answers) != 1 or UNDEFINED in answers:
        raise SystemExit(f"{path} gives {answers}: no figure")
    figures = median_rounds(args.rounds, {
        label: (lambda e=e: per_item(e.evaluate, records, repeat))
        for label, e in expressions.items()})
    side_by_side(f"{path} ({repeat * len(records):,} evaluations per round)", "µs", figures)


# -- (3) HTTP -----------------------------------------------------------------------------


def serve() -> None:
    """The child process: answer every request on 127.0.0.1 with the same account."""
    body = json.dumps(ACCOUNT).encode()
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    class Answering(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:  # GETs: no request bodies
                self.buffer = self.buffer[end + 4:]
                self.transport.write(answer)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Answering, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF

    run_loop(Settings(), main())


async def requests_per_client(url: str, kind: str, count: int,
                              in_flight: int) -> dict[str, tuple[float, float]]:
    """(CPU µs per request, requests/s) of the two clients on ``kind``'s transport,
    ``count`` requests each, ``in_flight`` at a time."""
    acme = load_connector(ROOT / "connectors" / "acme-crm.json")
    endpoint = InstanceEndpoint("bench", variables={"port": url.rsplit(":", 1)[1]},
                                credentials={"apiKey": "env:BENCH_ACME_API_KEY"},
                                # the connector's own limit (200 requests/s) lifted
                                settings={"rateLimit": {"concurrency": in_flight,
                                                        "requests": 10**9}})
    operation = acme.operations["getCompany"]
    figures = {}
    async with BssClient(url, http_transport=kind, batch_reads=False) as bss, \
            ThirdPartyClient(acme, endpoint, http_transport=kind) as crm:  # type: ignore[arg-type]
        async def bss_read(i: int) -> bool:
            return (await bss.get_one("acme-telecom", "account", f"acc-{i}")) is not None

        async def crm_read(i: int) -> bool:
            plan = RequestPlan("GET", f"{url}/companies/{i}", {}, UNDEFINED, operation)
            response = await crm.send(plan)
            return response.status == 200 and bool(response.body)

        for name, read in (("BssClient.get_one", bss_read), ("ThirdPartyClient.send", crm_read)):
            await asyncio.gather(*(worker(read, w, 8) for w in range(in_flight)))  # warm-up
            cpu, wall = time.process_time(), time.perf_counter()
            done = await asyncio.gather(*(worker(read, w, count // in_flight)
                                          for w in range(in_flight)))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            succeeded = sum(done)
            if succeeded != in_flight * (count // in_flight):
                raise SystemExit(f"{name} on {kind}: only {succeeded} answers as expected")
            figures[name] = (cpu / succeeded * 1e6, succeeded / wall)
    return figures


async def worker(read: Callable[[int], Any], number: int, count: int) -> int:
    return sum([await read(number * count + i) for i in range(count)])


def bench_http(args: argparse.Namespace) -> None:
    settings = Settings()
    print(f"(3) HTTP — CPU µs per request (this process's; the server's excluded), "
          f"{args.requests:,} requests per client and round, event loop {settings.event_loop}")
    os.environ.setdefault("BENCH_ACME_API_KEY", "bench-key")
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{server.stdout.readline().strip()}"
        for in_flight in (int(n) for n in args.in_flight.split(",")):
            seen: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for _ in range(args.rounds):
                for kind in ("fast", "httpx"):
                    for name, figure in run_loop(settings, requests_per_client(
                            url, kind, args.requests, in_flight)).items():
                        seen.setdefault((name, kind), []).append(figure)
            for name in ("BssClient.get_one", "ThirdPartyClient.send"):
                ours, theirs = seen[(name, "fast")], seen[(name, "httpx")]
                cpu = {"our transport": statistics.median(c for c, _ in ours),
                       "httpx's": statistics.median(c for c, _ in theirs)}
                side_by_side(f"{name}, {in_flight} in flight", "µs", cpu)
                print(f"      requests/s: httpx's "
                      f"{statistics.median(r for _, r in theirs):,.0f}, our transport "
                      f"{statistics.median(r for _, r in ours):,.0f}")
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=10)


PARTS = {"schemas": bench_schemas, "transform": bench_transform, "http": bench_http}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="comma-separated, of: " + ", ".join(PARTS))
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per part")
    parser.add_argument("--messages", type=int, default=2_000, help="documents per check")
    parser.add_argument("--records", type=int, default=5_000, help="records per round")
    parser.add_argument("--requests", type=int, default=1_600,
                        help="requests per client and round")
    parser.add_argument("--in-flight", default="1,16", help="requests in flight, e.g. 1,16")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return 0
    print(" ".join([".venv/bin/python bench/fastpaths.py", *sys.argv[1:]]))
    for part in args.parts.split(","):
        PARTS[part.strip()](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
