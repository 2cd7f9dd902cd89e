"""The hot queries stay index-driven on big tables PostgreSQL has never analyzed.

A table loaded in bulk has no statistics until autovacuum analyzes it (off on some
machines, minutes late on others). The planner then guesses, and a guess that reads
a whole collection, or a whole audit partition, makes each batch's cost grow with
the data (issue 13: 40,000 accounts, 100-128 ms a batch). Here every table holds
ROWS rows written by ``generate_series`` and is never analyzed; each hot query is
explained twice — with its values inlined (a custom plan) and prepared with
``plan_cache_mode = force_generic_plan`` (the plan psycopg's prepared statements
may settle on) — and every scan must be an index scan whose condition names the
key looked up: no sequential scan, no walk of an index by its prefix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from sandbox import relay, store
from sandbox.migration import migrate as migrate_sandbox
from shared.audit.settled import ROWS_SQL
from shared.storage import links
from shared.storage.db import Database
from shared.storage.migrate import upgrade

ROWS = 100_000
BATCH = 100  # ids a batch asks about (a pusher's or dispatcher's prefetch window)
ORG, INSTANCE, ENTITY = "org-plans", "inst-plans", "account"
SINCE = datetime(2000, 1, 1, tzinfo=UTC)

_FILL = [
    "INSERT INTO organizations (id, name) VALUES ('org-plans', 'Plans')",
    "INSERT INTO connectors (id, title, version, sha256, document)"
    " VALUES ('c-plans', 'Plans', '1', repeat('a', 64), '{}')",
    "INSERT INTO instances (id, org_id, connector_id, name)"
    " VALUES ('inst-plans', 'org-plans', 'c-plans', 'Plans')",
    f"INSERT INTO links (instance_id, entity, bss_id, external_id, state)"
    f" SELECT 'inst-plans', 'account', 'acc_' || g, 'ext_' || g, 'linked'"
    f" FROM generate_series(1, {ROWS}) AS g",
    f"INSERT INTO audit_log (at, service, message_id, attempt, outcome, record_id)"
    f" SELECT now() - g * interval '1 ms', 'pusher', 'm' || g, 0, 'created', 'acc_' || g"
    f" FROM generate_series(1, {ROWS}) AS g",
    f"INSERT INTO records (org_id, entity, id, data, created_at, updated_at)"
    f" SELECT 'org-plans', 'account', 'acc_' || g, jsonb_build_object('name', 'n' || g),"
    f" now(), now() + g * interval '1 ms' FROM generate_series(1, {ROWS}) AS g",
    f"INSERT INTO outbox (routing_key, body, published_at)"
    f" SELECT 'account.created', '{{}}', now() FROM generate_series(1, {ROWS}) AS g",
    "INSERT INTO outbox (routing_key, body) VALUES ('account.created', '{}')",
]

_IDS = [f"acc_{n}" for n in range(1, ROWS, ROWS // BATCH)]
_EXTERNAL_IDS = [f"ext_{n}" for n in range(1, ROWS, ROWS // BATCH)]
_MESSAGES = [f"m{n}" for n in range(1, ROWS, ROWS // BATCH)]

#: name: (SQL, parameters, what every index condition must name)
HOT_QUERIES: dict[str, tuple[str, tuple[Any, ...], str]] = {
    "sandbox get": (store._GET, (ORG, ENTITY, "acc_500"), "(id = "),
    "sandbox lock": (store._LOCK, (ORG, ENTITY, "acc_500"), "(id = "),
    "sandbox list by ids": (store._LIST_IDS, (_IDS, ORG, ENTITY, SINCE), "(id = "),
    "sandbox list changed": (store._LIST, (ORG, ENTITY, SINCE, SINCE, "", 101), "updated_at"),
    "relay pending": (relay._PENDING, (500,), "outbox_pending"),
    "links linked by bss id": (links.LINKED_BY_BSS_ID, (_IDS, INSTANCE, ENTITY), "(bss_id = "),
    "links linked by external id": (links.LINKED_BY_EXTERNAL_ID,
                                    (_EXTERNAL_IDS, INSTANCE, ENTITY), "(external_id = "),
    # The statements by one key (get, release, mark, delete) name the same columns.
    "links one by bss id": ("SELECT * FROM links WHERE instance_id = %s AND entity = %s"
                            " AND bss_id = %s", (INSTANCE, ENTITY, "acc_500"), "(bss_id = "),
    "links busy claims": (links.BUSY_LINKS_BY_BSS_ID,
                          ([INSTANCE] * BATCH, [ENTITY] * BATCH, _IDS), "(bss_id = "),
    "audit settled look-up": (ROWS_SQL, (_MESSAGES,), "(message_id = "),
}


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def scan_problems(plan: dict[str, Any], key: str) -> list[str]:
    """What in ``plan`` reads more than the rows looked up: a sequential scan, or an
    index scan whose condition does not name ``key`` (``key`` may also name the
    index, for a partial index that holds only the rows wanted)."""
    problems = []
    for node in _nodes(plan):
        kind = node["Node Type"]
        if kind == "Seq Scan":
            problems.append(f"Seq Scan on {node['Relation Name']}")
        elif kind in ("Index Scan", "Index Only Scan", "Bitmap Index Scan"):
            condition = node.get("Index Cond", "")
            if key not in condition and key != node["Index Name"]:
                problems.append(f"{kind} using {node['Index Name']} on {condition or 'all'}")
    return problems


def _generic(sql: str) -> str:
    """``sql`` with its ``%s`` placeholders numbered for PREPARE."""
    numbers = iter(range(1, 100))
    return re.sub(r"%s", lambda _: f"${next(numbers)}", sql)


def _plans(conn: psycopg.Connection[Any], sql: str,
           params: tuple[Any, ...]) -> dict[str, dict[str, Any]]:
    literal = psycopg.ClientCursor(conn)
    custom = conn.execute("EXPLAIN (FORMAT JSON) " + literal.mogrify(sql, params)).fetchone()
    conn.execute("DEALLOCATE ALL")
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute("PREPARE hot AS " + _generic(sql))
    arguments = literal.mogrify(", ".join(["%s"] * len(params)), params)
    generic = conn.execute(f"EXPLAIN (FORMAT JSON) EXECUTE hot({arguments})").fetchone()
    conn.execute("RESET plan_cache_mode")
    assert custom is not None and generic is not None
    return {"custom": custom[0][0]["Plan"], "generic": generic[0][0]["Plan"]}


@pytest.fixture
async def unanalyzed(empty_db: Database, database_url: str) -> str:
    """A schema with bss-sync's and the sandbox's tables, ROWS rows in each big one,
    never analyzed (autovacuum off on them); its name."""
    await upgrade(empty_db)
    await migrate_sandbox(empty_db, empty_db.schema)
    with psycopg.connect(database_url, options=f"-c search_path={empty_db.schema}",
                         autocommit=True) as conn:
        for table in ("links", "audit_log_default", "records", "outbox"):
            conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        for partition in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'audit_log'::regclass").fetchall():
            conn.execute(f"ALTER TABLE {partition[0]} SET (autovacuum_enabled = false)")
        for statement in _FILL:
            conn.execute(statement)
        never = conn.execute(
            "SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = current_schema()"
            " AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)").fetchone()
        assert never == (0,)
    return empty_db.schema


async def test_hot_queries_read_by_index_on_big_tables_never_analyzed(
        unanalyzed: str, database_url: str) -> None:
    failures = {}
    with psycopg.connect(database_url, options=f"-c search_path={unanalyzed}",
                         autocommit=True, prepare_threshold=None) as conn:
        for name, (sql, params, key) in HOT_QUERIES.items():
            for mode, plan in _plans(conn, sql, params).items():
                problems = scan_problems(plan, key)
                if problems:
                    failures[f"{name} ({mode})"] = problems
    assert not failures, json.dumps(failures, indent=1)


def test_the_plan_check_sees_a_scan_of_a_whole_collection() -> None:
    """The check itself: the plan issue 13 saw (the ``records_changed`` index walked
    by its (org, entity) prefix, the ids filtered) and a sequential scan fail it."""
    walked = {"Node Type": "Sort", "Plans": [{
        "Node Type": "Index Scan", "Index Name": "records_changed", "Relation Name": "records",
        "Index Cond": "((org_id = 'o'::text) AND (entity = 'account'::text))",
        "Filter": "(id = ANY ('{acc_1}'::text[]))"}]}
    assert scan_problems(walked, "(id = ") == [
        "Index Scan using records_changed on ((org_id = 'o'::text) AND "
        "(entity = 'account'::text))"]
    assert scan_problems({"Node Type": "Seq Scan", "Relation Name": "audit_log_2026_12"},
                         "(message_id = ") == ["Seq Scan on audit_log_2026_12"]
