"""The reconciliation itself (pure, no I/O): a clean snapshot passes, and each kind of
damage a chaos run can do is reported — so that a green chaos run means something."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.chaos.reconcile import DeadLetter, Snapshot, in_flight, reconcile
from tests.e2e.records import expected_company, expected_person

pytestmark = pytest.mark.chaos

ACCOUNT = {"id": "acc_1", "name": "Acme", "code": "A-1", "type": "customer", "currency": "EUR"}
CONTACT = {"id": "con_1", "lastName": "Doe", "accountId": "acc_1", "email": "d@example.org"}


def row(message: str, record: str, outcome: str, *, attempt: int = 0, event: str = "ev-a",
        service: str = "pusher", action: str = "create") -> dict[str, Any]:
    return {"service": service, "message_id": message, "attempt": attempt, "outcome": outcome,
            "action": action, "record_id": record, "correlation_id": event,
            "error_class": None, "error_message": None, "http_status": None}


def clean() -> Snapshot:
    """Two records created once each, with every row, link and queue as they should be."""
    company = {**expected_company(ACCOUNT), "id": 7}
    person = {**expected_person(CONTACT, 7), "id": 9}
    return Snapshot(
        records={"acc_1": {"entity": "account", "data": ACCOUNT, "deleted": False},
                 "con_1": {"entity": "contact", "data": CONTACT, "deleted": False}},
        latest_event={"acc_1": "ev-a", "con_1": "ev-c"},
        events=["ev-a", "ev-c"], unpublished=0,
        third_party={"companies": [company], "people": [person]},
        audit=[row("ev-a", "acc_1", "dispatched", service="dispatcher", event="ev-a"),
               row("ev-c", "con_1", "dispatched", service="dispatcher", event="ev-c"),
               row("m-a", "acc_1", "created"),
               row("m-c", "con_1", "retrying", event="ev-c"),
               row("m-c", "con_1", "created", attempt=1, event="ev-c")],
        dead_letters=[],
        queues={"pusher": 0, "pusher.retry.1s": 0, "pusher.dead": 0, "dispatcher.events": 0},
        links=[{"entity": "account", "bss_id": "acc_1", "external_id": "7", "state": "linked",
                "claim": None},
               {"entity": "contact", "bss_id": "con_1", "external_id": "9", "state": "linked",
                "claim": None}])


def kinds(snap: Snapshot) -> set[str]:
    return set(reconcile(snap).problems)


def test_a_clean_run_reconciles() -> None:
    report = reconcile(clean())
    assert report.ok, str(report)
    assert in_flight(clean()) == []


def test_a_record_missing_from_the_third_party_is_reported() -> None:
    snap = clean()
    snap.third_party["people"] = []
    report = reconcile(snap)
    assert list(report.problems) == ["records not in the third party as the BSS has them"]
    assert "con_1: missing from the third party; no dead letter" in str(report)


def test_a_record_twice_in_the_third_party_is_reported_even_with_a_dead_letter() -> None:
    snap = clean()
    snap.third_party["companies"].append({**snap.third_party["companies"][0], "id": 8})
    snap.dead_letters = [DeadLetter("pusher.dead", "m-x", {"x-record-id": "acc_1",
                                                            "x-error": "boom"}, None)]
    assert "records duplicated in the third party" in kinds(snap)


def test_a_stale_record_is_reported_with_the_field_that_differs() -> None:
    snap = clean()
    snap.records["acc_1"] = {**snap.records["acc_1"],
                             "data": {**ACCOUNT, "name": "Acme Renamed"}}
    report = reconcile(snap)
    assert "name: expected 'Acme Renamed', Acme has 'Acme'" in str(report)


def test_a_dead_letter_with_a_reason_excuses_a_missing_record() -> None:
    snap = clean()
    snap.third_party["people"] = []
    snap.audit[-1] = row("m-c", "con_1", "dead", attempt=1, event="ev-c")
    snap.dead_letters = [DeadLetter("pusher.dead", "m-c", {
        "x-record-id": "con_1", "x-error": "POST /people answered 999",
        "x-error-class": "RemoteProtocolError"}, None)]
    snap.queues["pusher.dead"] = 1
    assert reconcile(snap).ok, str(reconcile(snap))


def test_a_dead_letter_does_not_excuse_a_latest_change_audited_as_done() -> None:
    """The lost update: the third party is stale, yet the latest change says ``unchanged``."""
    snap = clean()
    snap.records["acc_1"] = {**snap.records["acc_1"], "data": {**ACCOUNT, "name": "New"}}
    snap.latest_event["acc_1"] = "ev-b"
    snap.events.append("ev-b")
    snap.audit += [row("ev-b", "acc_1", "dispatched", service="dispatcher", event="ev-b"),
                   row("m-b", "acc_1", "unchanged", event="ev-b", action="update")]
    snap.dead_letters = [DeadLetter("pusher.dead", "m-old", {"x-record-id": "acc_1",
                                                              "x-error": "old"}, None)]
    snap.queues["pusher.dead"] = 1
    report = reconcile(snap)
    assert "yet its latest change was audited ['unchanged']" in str(report)


def test_a_dead_letter_without_a_reason_is_reported() -> None:
    snap = clean()
    snap.dead_letters = [DeadLetter("pusher.dead", "m-a", {"x-record-id": "acc_1"}, None)]
    snap.queues["pusher.dead"] = 1
    assert "dead letters without a readable reason" in kinds(snap)


def test_a_deleted_record_still_in_the_third_party_is_reported() -> None:
    snap = clean()
    snap.records["con_1"] = {**snap.records["con_1"], "deleted": True}
    assert "deleted in the BSS, still in the third party" in str(reconcile(snap))


def test_a_message_lost_after_its_retrying_row_is_reported_and_keeps_the_flow_moving() -> None:
    snap = clean()
    snap.audit.pop()  # m-c's retry copy vanished: its last row says retrying
    assert "push messages without a final audit row" in kinds(snap)
    assert any("without a final row" in reason for reason in in_flight(snap))


def test_two_final_rows_for_one_message_are_reported() -> None:
    snap = clean()
    snap.audit.append(row("m-a", "acc_1", "unchanged", attempt=1))
    assert kinds(snap) == {"push messages with several final audit rows"}


def test_an_event_dispatched_twice_is_reported() -> None:
    snap = clean()
    snap.audit.append(copy.deepcopy(snap.audit[0]))
    assert kinds(snap) == {"events without exactly one final dispatcher row"}


def test_a_message_left_in_a_work_or_retry_queue_is_reported() -> None:
    snap = clean()
    snap.queues["pusher.retry.1s"] = 3
    assert kinds(snap) == {"queues holding messages nobody will consume"}
    assert in_flight(snap) == ["messages waiting in {'pusher.retry.1s': 3}"]


def test_a_claim_left_held_and_a_link_to_another_object_are_reported() -> None:
    snap = clean()
    snap.links[0] = {**snap.links[0], "claim": "m-z", "external_id": "8"}
    assert kinds(snap) == {"link claims still held",
                           "links that do not point at the third party's object"}


def test_an_object_no_bss_record_explains_is_reported() -> None:
    snap = clean()
    snap.third_party["companies"].append({"id": 99, "bssId": "acc_unknown"})
    assert kinds(snap) == {"objects in the third party no BSS record explains"}


def test_unpublished_events_keep_the_flow_moving() -> None:
    snap = clean()
    snap.unpublished = 2
    assert "events the BSS never published" in kinds(snap)
    assert in_flight(snap)[0] == "2 events not published yet"
