"""The push path end to end: sandbox BSS → events → dispatcher → pusher → Acme CRM.

Real processes: the sandbox BSS (its outbox relay publishes to ``bss.events``), a
dispatcher and a pusher (``python -m services.…``), json-server as the Acme CRM of
``connectors/acme-crm.json`` behind a fault-injecting proxy. Each test writes records
through the BSS's HTTP API, waits (with a deadline) for what must become true, and
checks it where it is observable: the records in json-server, the audit log, the
requests the proxy saw, the dead-letter queue.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.e2e.conftest import SHORT_READ_TIMEOUT, AcmeWorld
from tests.e2e.records import (
    account_bodies,
    contact_bodies,
    expected_company,
    expected_person,
    mapping_differences,
)
from tests.e2e.stack import PUSHER_DEAD, Tenant
from tests.e2e.thirdparty import Seen
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.e2e

Record = dict[str, Any]


# --------------------------------------------------------------------------- helpers


def by_bss_id(items: list[Record]) -> dict[str, list[Record]]:
    found: dict[str, list[Record]] = {}
    for item in items:
        found.setdefault(item.get("bssId"), []).append(item)
    return found


def wait_synced(acme: AcmeWorld, tenant: Tenant, accounts: list[Record],
                contacts: list[Record], *, timeout: float,
                outcomes: frozenset[str] = frozenset({"created"})) -> dict[str, list[Record]]:
    """Until json-server holds every record and each has an audit row with one of
    ``outcomes``; json-server's state (``companies``, ``people``) then."""
    wanted = {r["id"] for r in accounts} | {r["id"] for r in contacts}
    audit = acme.stack.audit

    def synced() -> dict[str, list[Record]] | None:
        done = {rid for rid, seen in audit.outcomes(tenant.instance_id).items()
                if outcomes & set(seen)}
        if not wanted <= done:
            return None
        state = acme.json_server.state()
        held = {c.get("bssId") for c in state["companies"]} | {
            p.get("bssId") for p in state["people"]}
        return state if wanted <= held else None

    def state() -> str:
        data = acme.json_server.state()
        return (f"json-server holds {len(data['companies'])} companies and "
                f"{len(data['people'])} people (want {len(accounts)} and {len(contacts)}); "
                f"audit: {audit.summary(tenant.instance_id)}")

    return wait_until(synced, timeout=timeout, what=f"{len(wanted)} records synced",
                      state=state, interval=0.25)


def assert_exactly_once(state: dict[str, list[Record]], accounts: list[Record],
                        contacts: list[Record]) -> dict[str, Record]:
    """Each record once in json-server with the mapped fields; ``{bss id: company}``."""
    companies = by_bss_id(state["companies"])
    people = by_bss_id(state["people"])
    codes = Counter(c.get("accountNumber") for c in state["companies"])
    twice = {code: n for code, n in codes.items() if n > 1}
    assert not twice, f"companies created more than once: {twice}"
    problems = []
    for account in accounts:
        found = companies.get(account["id"], [])
        if len(found) != 1:
            problems.append(f"account {account['id']}: {len(found)} companies")
            continue
        problems += [f"account {account['id']}: {p}"
                     for p in mapping_differences(expected_company(account), found[0])]
    for contact in contacts:
        found = people.get(contact["id"], [])
        if len(found) != 1:
            problems.append(f"contact {contact['id']}: {len(found)} people")
            continue
        company = companies.get(contact["accountId"], [{}])[0]
        problems += [f"contact {contact['id']}: {p}" for p in mapping_differences(
            expected_person(contact, company.get("id")), found[0])]
    assert not problems, f"{len(problems)} problems, first ones: {problems[:10]}"
    assert len(state["companies"]) == len(accounts)
    assert len(state["people"]) == len(contacts)
    return {bss_id: found[0] for bss_id, found in companies.items()}


def assert_no_dead_letters(acme: AcmeWorld, tenant: Tenant) -> None:
    dead = acme.stack.audit.rows(tenant.instance_id, outcome="dead")
    assert not dead, f"dead-lettered: {[(r['record_id'], r['error_message']) for r in dead]}"
    assert acme.stack.dead_letters() == []


def record_key(seen: Seen) -> str | None:
    """Which record a request to Acme is about, when it says so in its body or query:
    the account number for companies (matched by it, then sent), the BSS id for people.
    Requests addressed by Acme id (``PATCH /companies/7``) say nothing: ``None``."""
    return (seen.query.get("accountNumber") or seen.json.get("accountNumber")
            or seen.json.get("bssId"))


# --------------------------------------------------------------------------- scenarios


def test_creates_reach_acme_exactly_once_with_mapped_fields(acme: AcmeWorld) -> None:
    """200 accounts and 400 contacts created in the BSS: each is in Acme once, with the
    fields the connector maps, and every person points at its company."""
    tenant = acme.tenant()
    bss = acme.stack.bss
    accounts = bss.create_many(tenant.org_id, "account", account_bodies(200, seed=1))
    contacts = bss.create_many(tenant.org_id, "contact", contact_bodies(accounts, 2, seed=2))

    state = wait_synced(acme, tenant, accounts, contacts, timeout=90)

    assert_exactly_once(state, accounts, contacts)
    outcomes = acme.stack.audit.outcomes(tenant.instance_id)
    created_twice = {rid: seen for rid, seen in outcomes.items()
                     if seen.count("created") != 1}
    assert not created_twice, f"records not audited 'created' exactly once: {created_twice}"
    dispatched = acme.stack.audit.dispatched(tenant.org_id)
    assert dispatched == {r["id"]: [[tenant.instance_id]] for r in accounts + contacts}
    # one create request per record: nothing was retried on the happy path
    assert acme.proxy.count("POST", "/companies") == 200
    assert acme.proxy.count("POST", "/people") == 400
    assert_no_dead_letters(acme, tenant)


def test_updates_reach_acme_and_an_unchanged_record_makes_no_call(acme: AcmeWorld) -> None:
    """50 accounts updated in the BSS are updated in Acme (same company, new fields); an
    event for an account whose mapped fields did not change sends nothing to Acme."""
    tenant = acme.tenant()
    bss, audit = acme.stack.bss, acme.stack.audit
    accounts = bss.create_many(tenant.org_id, "account", account_bodies(50, seed=3))
    before = {c["bssId"]: c for c in wait_synced(acme, tenant, accounts, [],
                                                  timeout=60)["companies"]}
    changes = {a["id"]: {"name": f"{a['name']} Group", "phone": f"+33 1 00 00 00 {i:02d}",
                         "numberOfEmployees": a["numberOfEmployees"] + 1}
               for i, a in enumerate(accounts)}
    updated = bss.patch_many(tenant.org_id, "account", changes)

    wait_until(lambda: all("updated" in audit.outcomes(tenant.instance_id).get(rid, [])
                           for rid in updated),
               timeout=60, what="50 accounts audited 'updated'",
               state=lambda: audit.summary(tenant.instance_id))
    companies = assert_exactly_once(acme.json_server.state(), list(updated.values()), [])
    for rid, company in companies.items():
        assert company["id"] == before[rid]["id"], "the update created another company"
        assert company["createdAt"] == before[rid]["createdAt"]
        assert company["updatedAt"] > before[rid]["updatedAt"]
    assert acme.proxy.count("POST", "/companies") == 50
    assert sum(1 for s in acme.proxy.requests() if s.method == "PATCH") == 50

    # An event whose record maps to what Acme already has: audited, not sent.
    target = updated[accounts[0]["id"]]
    company = companies[target["id"]]
    mark = time.monotonic()
    bss.patch(tenant.org_id, "account", target["id"],
              {"description": "a note the connector does not map"})
    row = wait_until(lambda: audit.rows(tenant.instance_id, record_id=target["id"],
                                        outcome="unchanged"),
                     timeout=30, what="the account audited 'unchanged'",
                     state=lambda: audit.outcomes(tenant.instance_id).get(target["id"]))[0]
    assert row["external_id"] == str(company["id"]) and row["http_status"] is None
    about_target = acme.proxy.requests(lambda s: s.at >= mark and (
        s.path == f"/companies/{company['id']}" or record_key(s) == target["code"]))
    assert about_target == [], "an unchanged record was sent to Acme"
    assert by_bss_id(acme.json_server.collection("companies"))[target["id"]] == [company]


def test_delete_with_permission_deletes_the_company(acme: AcmeWorld) -> None:
    """An account deleted in the BSS is deleted in Acme when the instance may delete."""
    tenant = acme.tenant()
    bss, audit = acme.stack.bss, acme.stack.audit
    accounts = bss.create_many(tenant.org_id, "account", account_bodies(3, seed=4))
    companies = assert_exactly_once(wait_synced(acme, tenant, accounts, [], timeout=30),
                                    accounts, [])
    victim = accounts[0]
    external_id = companies[victim["id"]]["id"]

    bss.delete(tenant.org_id, "account", victim["id"])

    row = wait_until(lambda: audit.rows(tenant.instance_id, record_id=victim["id"],
                                        outcome="deleted"),
                     timeout=30, what="the account audited 'deleted'",
                     state=lambda: audit.outcomes(tenant.instance_id))[0]
    assert row["external_id"] == str(external_id) and row["http_status"] == 200
    remaining = by_bss_id(acme.json_server.collection("companies"))
    assert victim["id"] not in remaining
    assert set(remaining) == {a["id"] for a in accounts[1:]}
    deletes = acme.proxy.requests(lambda s: s.method == "DELETE")
    assert [(s.path, s.status) for s in deletes] == [(f"/companies/{external_id}", 200)]


def test_delete_without_permission_is_skipped(acme: AcmeWorld) -> None:
    """Without the delete permission the deletion is audited 'skipped' with the reason,
    and nothing is deleted in Acme."""
    tenant = acme.tenant(permissions={"account": {"push": ["create", "update"]},
                                      "contact": {"push": ["create", "update"]}})
    bss, audit = acme.stack.bss, acme.stack.audit
    accounts = bss.create_many(tenant.org_id, "account", account_bodies(3, seed=5))
    companies = assert_exactly_once(wait_synced(acme, tenant, accounts, [], timeout=30),
                                    accounts, [])
    victim = accounts[0]

    bss.delete(tenant.org_id, "account", victim["id"])

    row = wait_until(lambda: audit.rows(tenant.instance_id, record_id=victim["id"],
                                        outcome="skipped"),
                     timeout=30, what="the deletion audited 'skipped'",
                     state=lambda: audit.outcomes(tenant.instance_id))[0]
    assert row["action"] == "delete"
    assert "not permitted to delete" in row["details"]["reason"], row["details"]
    held = by_bss_id(acme.json_server.collection("companies"))
    assert held[victim["id"]] == [companies[victim["id"]]], "the company changed or went"
    assert len(held) == 3
    assert acme.proxy.requests(lambda s: s.method == "DELETE") == []


def test_server_errors_are_retried_until_synced(acme: AcmeWorld) -> None:
    """Acme answers 500 to the next 40 requests: every record is retried and synced once."""
    tenant = acme.tenant()
    bss, audit = acme.stack.bss, acme.stack.audit
    acme.proxy.fail_next(40, 500)
    accounts = bss.create_many(tenant.org_id, "account", account_bodies(20, seed=6))
    contacts = bss.create_many(tenant.org_id, "contact", contact_bodies(accounts, 1, seed=7))

    state = wait_synced(acme, tenant, accounts, contacts, timeout=60)

    assert_exactly_once(state, accounts, contacts)
    assert len(acme.proxy.requests(lambda s: s.fault == "500")) == 40
    retried = audit.rows(tenant.instance_id, outcome="retrying")
    assert retried and all(r["error_class"] in ("RemoteUnavailable", "RecordBusy",
                                                "DependencyPending") for r in retried)
    assert any(r["http_status"] == 500 for r in retried)
    assert_no_dead_letters(acme, tenant)


def test_timeouts_are_retried_without_duplicates(acme: AcmeWorld) -> None:
    """Acme creates what it is sent but answers the first creates of each kind after the
    client's read timeout: the retries find those companies (match by account number)
    and replay the people's creates with the same Idempotency-Key — nothing is created
    twice."""
    tenant = acme.tenant(connector="acme-crm-short-timeout")
    bss, audit = acme.stack.bss, acme.stack.audit
    for path in ("/companies", "/people"):
        acme.proxy.hold_next(5, delay=SHORT_READ_TIMEOUT + 1.5,
                             when=lambda s, path=path: (s.method, s.path) == ("POST", path))
    accounts = bss.create_many(tenant.org_id, "account", account_bodies(15, seed=8))
    contacts = bss.create_many(tenant.org_id, "contact", contact_bodies(accounts, 1, seed=9))

    state = wait_synced(acme, tenant, accounts, contacts, timeout=60)

    companies = assert_exactly_once(state, accounts, contacts)
    held = acme.proxy.requests(lambda s: (s.fault or "").startswith("held"))
    assert Counter(s.path for s in held) == {"/companies": 5, "/people": 5}
    timeouts = [r for r in audit.rows(tenant.instance_id, outcome="retrying")
                if "ReadTimeout" in (r["error_message"] or "")]
    assert len(timeouts) >= 10, "every held create should have timed out"
    for seen in held:
        if seen.path == "/companies":  # found by the retry's match, not created again
            rows = audit.rows(tenant.instance_id, record_id=seen.json["bssId"],
                              outcome="created")
            assert [r["details"].get("matched") for r in rows] == [
                str(companies[seen.json["bssId"]]["id"])]
    replayed = Counter(s.headers.get("idempotency-key") for s in acme.proxy.requests(
        lambda s: s.method == "POST" and s.path == "/people"))
    assert sum(1 for n in replayed.values() if n > 1) >= 5, \
        "each held person's create should have been sent again with its key"
    assert_no_dead_letters(acme, tenant)


def test_rate_limit_retry_after_is_honoured(acme: AcmeWorld) -> None:
    """Acme answers 429 with Retry-After: 2 to the next 25 requests: no record is asked
    for again before 2 s have passed, and every record is synced once."""
    retry_after = 2
    tenant = acme.tenant()
    bss, audit = acme.stack.bss, acme.stack.audit
    acme.proxy.rate_limit_next(25, retry_after)
    accounts = bss.create_many(tenant.org_id, "account", account_bodies(10, seed=10))

    state = wait_synced(acme, tenant, accounts, [], timeout=60)

    assert_exactly_once(state, accounts, [])
    by_record: dict[str, list[Seen]] = {}
    for seen in acme.proxy.requests():
        by_record.setdefault(record_key(seen), []).append(seen)
    too_soon = []
    for key, requests in by_record.items():
        for limited, following in itertools.pairwise(requests):
            if limited.status == 429:
                assert limited.answered_at is not None
                waited = following.at - limited.answered_at
                if waited < retry_after:
                    too_soon.append(f"{key}: asked again {waited:.2f}s after a 429")
    assert not too_soon, too_soon
    assert len(acme.proxy.requests(lambda s: s.status == 429)) == 25
    # 25 > 2 per record: some record met a second 429 and went to a retry queue
    limited = [r for r in audit.rows(tenant.instance_id, outcome="retrying")
               if r["http_status"] == 429]
    assert limited and all(r["details"]["retry_in_s"] >= retry_after for r in limited)
    assert_no_dead_letters(acme, tenant)


def test_a_422_dead_letters_that_record_and_the_others_sync(acme: AcmeWorld) -> None:
    """Acme refuses one person with 422: that contact is in pusher.dead with headers an
    operator can read, it was sent once (never retried), and everything else is synced."""
    tenant = acme.tenant()
    bss, audit = acme.stack.bss, acme.stack.audit
    accounts = bss.create_many(tenant.org_id, "account", account_bodies(5, seed=11))
    wait_synced(acme, tenant, accounts, [], timeout=30)  # the contacts' parents are there
    bodies = contact_bodies(accounts, 2, seed=12)
    bodies[3]["lastName"] = "Refused"
    acme.proxy.reject(lambda s: s.method == "POST" and s.path == "/people"
                      and s.json.get("lastName") == "Refused",
                      422, {"message": "email is not deliverable", "field": "email"})
    contacts = bss.create_many(tenant.org_id, "contact", bodies)
    refused, others = contacts[3], contacts[:3] + contacts[4:]

    state = wait_synced(acme, tenant, accounts, others, timeout=60)
    dead = wait_until(lambda: acme.stack.dead_letters(), timeout=30,
                      what=f"a message in {PUSHER_DEAD}",
                      state=lambda: audit.outcomes(tenant.instance_id).get(refused["id"]))

    assert_exactly_once(state, accounts, others)
    assert len(dead) == 1
    headers = dead[0]["properties"]["headers"]
    assert headers["x-error-class"] == "RemoteRejected"
    assert "POST /people answered 422" in headers["x-error"]
    assert "email is not deliverable" in headers["x-error"]
    assert headers["x-http-status"] == 422
    assert headers["x-attempts"] == 1
    assert (headers["x-org-id"], headers["x-instance-id"]) == (tenant.org_id,
                                                               tenant.instance_id)
    assert (headers["x-entity"], headers["x-record-id"]) == ("contact", refused["id"])
    rows = audit.rows(tenant.instance_id, record_id=refused["id"])
    assert [(r["outcome"], r["http_status"]) for r in rows] == [("dead", 422)]
    sent = acme.proxy.requests(lambda s: s.json.get("bssId") == refused["id"])
    assert [(s.method, s.status) for s in sent] == [("POST", 422)]


def test_pusher_killed_mid_creates_every_record_exactly_once(acme: AcmeWorld) -> None:
    """The pusher is SIGKILLed in the middle of 500 creates — at a moment when companies
    and people are created in Acme but their answers have not reached it — and
    restarted: every record then exists exactly once in Acme."""
    tenant = acme.tenant()
    bss = acme.stack.bss
    hold = 0.1  # creates answer this late: the window where a crash could duplicate them
    acme.proxy.slow_down(hold, when=lambda s: s.method == "POST")

    def create_in_waves() -> tuple[list[Record], list[Record]]:
        """50 accounts then their 50 contacts, 5 times: both kinds in flight at once."""
        accounts: list[Record] = []
        contacts: list[Record] = []
        for wave, bodies in enumerate(chunked(account_bodies(250, seed=13), 50)):
            created = bss.create_many(tenant.org_id, "account", bodies)
            accounts += created
            contacts += bss.create_many(tenant.org_id, "contact",
                                        contact_bodies(created, 1, seed=14 + wave))
        return accounts, contacts

    def in_flight() -> set[str]:
        """Paths of creates Acme has done whose answers are held for a while yet."""
        now = time.monotonic()
        return {s.path for s in acme.proxy.requests(
            lambda s: s.method == "POST" and s.upstream_status == 201 and s.answered_at is None
            and s.forwarded_at is not None and now - s.forwarded_at < hold / 2)}

    with ThreadPoolExecutor(1) as pool:  # records keep coming while the pusher dies
        creating = pool.submit(create_in_waves)
        # in_flight() last: the kill follows it by far less than the hold left (≥ 50 ms)
        wait_until(lambda: held_in_acme(acme) >= 100
                   and in_flight() == {"/companies", "/people"},
                   timeout=60, interval=0.005, what="creates of both kinds in flight",
                   state=lambda: (held_in_acme(acme), in_flight()))
        killed_at = time.monotonic()
        acme.stack.pusher.kill()
        acme.proxy.clear_faults()
        accounts, contacts = creating.result()
    unanswered = acme.proxy.requests(
        lambda s: s.method == "POST" and s.at < killed_at and s.upstream_status == 201
        and (s.answered_at is None or s.answered_at > killed_at))
    assert {s.path for s in unanswered} == {"/companies", "/people"}
    assert held_in_acme(acme) < 500, "the kill came too late"
    restarted = time.monotonic()
    acme.stack.pusher.start()

    state = wait_synced(acme, tenant, accounts, contacts, timeout=120,
                        outcomes=frozenset({"created", "unchanged"}))

    assert_exactly_once(state, accounts, contacts)
    assert acme.proxy.requests(lambda s: s.at > restarted), "the restarted pusher did nothing"
    assert_no_dead_letters(acme, tenant)


def held_in_acme(acme: AcmeWorld) -> int:
    state = acme.json_server.state()
    return len(state["companies"]) + len(state["people"])


def chunked(items: list[Record], size: int) -> list[list[Record]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def test_a_replayed_create_of_a_changed_record_ends_with_the_new_values(acme: AcmeWorld) -> None:
    """Acme makes a company and a person but answers their creates after the client's
    timeout; the records then change in the BSS. The next push of each finds the record
    Acme made with the old values — the company by its match, the person by re-POSTing
    the same Idempotency-Key, which json-server answers with the original record and
    ``Idempotent-Replayed: true`` — and follows with an update: Acme ends holding the new
    values, once each. A later event with nothing mapped changed is ``unchanged``, and
    that is true; a change back to the old values is sent."""
    tenant = acme.tenant(connector="acme-crm-short-timeout")
    bss, audit = acme.stack.bss, acme.stack.audit
    [parent] = bss.create_many(tenant.org_id, "account", account_bodies(1, seed=40))
    wait_synced(acme, tenant, [parent], [], timeout=30)
    for path in ("/companies", "/people"):
        acme.proxy.hold_next(1, delay=SHORT_READ_TIMEOUT + 1.5,
                             when=lambda s, path=path: (s.method, s.path) == ("POST", path))
    [account] = bss.create_many(tenant.org_id, "account", account_bodies(1, seed=41))
    [contact] = bss.create_many(tenant.org_id, "contact", contact_bodies([parent], 1, seed=42))
    wait_until(lambda: len(acme.proxy.requests(lambda s: s.method == "POST"
                                                and s.upstream_status == 201
                                                and s.fault is not None)) == 2,
               timeout=30, what="both creates made by Acme, their answers held")
    account = bss.patch(tenant.org_id, "account", account["id"],
                        {"name": "Renamed After The Timeout", "phone": "+33 1 99 99 99 99"})
    contact = bss.patch(tenant.org_id, "contact", contact["id"],
                        {"lastName": "Renamed-After-Timeout", "jobTitle": "Buyer"})

    def updated(record: Record) -> list[dict[str, Any]]:
        return [r for r in audit.rows(tenant.instance_id, record_id=record["id"],
                                      outcome="updated") if "replayed" in r["details"]]

    rows = wait_until(lambda: (updated(account), updated(contact))
                      if updated(account) and updated(contact) else None,
                      timeout=60, what="both records updated after their replayed create",
                      state=lambda: {r["id"]: audit.outcomes(tenant.instance_id).get(r["id"])
                                     for r in (account, contact)})
    state = wait_synced(acme, tenant, [parent, account], [contact], timeout=30,
                        outcomes=frozenset({"created", "updated"}))

    companies = assert_exactly_once(state, [parent, account], [contact])
    [person] = by_bss_id(state["people"])[contact["id"]]
    assert companies[account["id"]]["name"] == "Renamed After The Timeout"
    assert (person["lastName"], person["jobTitle"]) == ("Renamed-After-Timeout", "Buyer")
    (company_row,), (person_row,) = rows
    assert company_row["details"]["matched"] == str(companies[account["id"]]["id"])
    assert set(company_row["details"]["differed"]) >= {"/name", "/phone"}
    assert "Idempotent-Replayed" in person_row["details"]["replayed"]
    assert set(person_row["details"]["differed"]) >= {"/lastName", "/jobTitle"}
    keys = Counter(s.headers.get("idempotency-key") for s in acme.proxy.requests(
        lambda s: (s.method, s.path) == ("POST", "/people")))
    assert list(keys.values()) == [2], "the person's create was sent again with its key"
    for record, outcome in ((account, "created"), (contact, "created")):
        assert outcome not in audit.outcomes(tenant.instance_id)[record["id"]], \
            "audited created although Acme was left holding other values"

    # Nothing mapped changed: unchanged, and true (Acme holds what the BSS maps to).
    mark = time.monotonic()
    bss.patch(tenant.org_id, "contact", contact["id"], {"description": "not mapped"})
    wait_until(lambda: audit.rows(tenant.instance_id, record_id=contact["id"],
                                  outcome="unchanged"), timeout=30,
               what="the contact audited unchanged")
    assert acme.proxy.requests(lambda s: s.at >= mark and s.path.startswith("/people")) == []
    # Back to the old last name: sent, since Acme holds the new one.
    bss.patch(tenant.org_id, "contact", contact["id"], {"lastName": "Back-Again"})
    wait_until(lambda: acme.json_server.collection("people")[-1]["lastName"] == "Back-Again"
               if acme.json_server.collection("people") else None, timeout=30,
               what="the change back reached Acme")
    assert_no_dead_letters(acme, tenant)
