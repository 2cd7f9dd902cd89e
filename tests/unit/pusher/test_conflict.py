"""Who wins a conflict (services.pusher.conflict, pure) and where the policy comes from
(the object's ``conflict``, an instance's override)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from services.pusher.conflict import (
    BSS,
    EXTERNAL,
    bss_modified,
    external_modified,
    instant,
    modified_since,
    policy_for,
    resolve,
)
from tests.unit.pusher.conftest import acme
from tests.unit.pusher.fakes import instance

EARLY = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)
LATE = datetime(2025, 6, 1, 10, 5, tzinfo=UTC)


def company_object():
    return acme().objects_for("account")[0]


def test_bss_wins_whatever_the_times():
    verdict = resolve("bss-wins", bss_modified=EARLY, external_modified=LATE)
    assert (verdict.winner, verdict.policy, verdict.external_wins) == (BSS, "bss-wins", False)
    assert verdict.details() == {"policy": "bss-wins", "winner": "bss",
                                 "why": "the policy is bss-wins"}


def test_external_wins_whatever_the_times():
    verdict = resolve("external-wins", bss_modified=LATE, external_modified=EARLY)
    assert (verdict.winner, verdict.external_wins) == (EXTERNAL, True)
    assert verdict.why == "the policy is external-wins"


def test_newest_wins_goes_to_the_external_record_modified_later():
    verdict = resolve("newest-wins", bss_modified=EARLY, external_modified=LATE)
    assert verdict.winner == EXTERNAL
    assert verdict.why == ("newest-wins: the external record is newer (BSS updatedAt "
                           "2025-06-01T10:00:00Z, external modified 2025-06-01T10:05:00Z)")


def test_newest_wins_goes_to_the_bss_record_modified_later():
    verdict = resolve("newest-wins", bss_modified=LATE, external_modified=EARLY)
    assert verdict.winner == BSS and verdict.why.startswith("newest-wins: the BSS record is newer")


def test_newest_wins_gives_a_tie_to_the_bss():
    verdict = resolve("newest-wins", bss_modified=EARLY, external_modified=EARLY)
    assert verdict.winner == BSS and "a tie goes to the BSS" in verdict.why


@pytest.mark.parametrize(("bss", "external", "missing"), [
    (None, LATE, "the BSS record's"), (EARLY, None, "the external record's")])
def test_newest_wins_without_a_time_gives_the_bss(bss, external, missing):
    verdict = resolve("newest-wins", bss_modified=bss, external_modified=external)
    assert verdict.winner == BSS
    assert verdict.why == f"newest-wins, but {missing} modification time is unknown: the BSS wins"


def test_the_instance_override_comes_before_the_object_policy():
    obj = company_object()
    assert obj.conflict == "bss-wins"
    assert policy_for(obj, None) == "bss-wins"
    assert policy_for(obj, "newest-wins") == "newest-wins"
    assert policy_for(obj, "whoever-shouts") == "bss-wins"  # not a policy: the object's


def test_an_instance_overrides_for_every_entity_or_per_entity():
    everywhere = dataclasses.replace(instance(), settings={"conflict": "external-wins"})
    assert everywhere.conflict_override("account") == "external-wins"
    assert everywhere.conflict_override("case") == "external-wins"
    per_entity = dataclasses.replace(instance(), settings={"conflict": {"account": "newest-wins"}})
    assert per_entity.conflict_override("account") == "newest-wins"
    assert per_entity.conflict_override("contact") is None
    assert instance().conflict_override("account") is None


def test_the_external_time_is_read_at_the_incremental_cursor_field():
    obj = company_object()
    assert external_modified(obj, {"updatedAt": "2025-06-01T10:05:00.000Z"}) == LATE
    assert external_modified(obj, {"name": "no time"}) is None
    assert external_modified(obj, {"updatedAt": "yesterday"}) is None
    assert external_modified(obj, None) is None


def test_an_object_declaring_no_incremental_listing_has_no_external_time():
    obj = dataclasses.replace(company_object(), pull_list=None)
    assert external_modified(obj, {"updatedAt": "2025-06-01T10:05:00.000Z"}) is None


def test_the_bss_time_is_its_updated_at():
    assert bss_modified({"updatedAt": "2025-06-01T12:05:00+02:00"}) == LATE
    assert bss_modified({"id": "x"}) is None
    assert bss_modified(None) is None


@pytest.mark.parametrize(("value", "fmt", "expected"), [
    ("2025-06-01T10:05:00Z", "iso8601", LATE),
    ("2025-06-01T10:05:00", "iso8601", LATE),  # no offset: UTC
    (1748772300000, "epoch-ms", LATE),
    ("1748772300000", "epoch-ms", LATE),
    (1748772300, "epoch-s", LATE),
    (True, "epoch-s", None),
    ("not a time", "iso8601", None),
    ({"at": 1}, "iso8601", None),
])
def test_instants(value, fmt, expected):
    assert instant(value, fmt) == expected


def test_modified_since_the_last_sync_unless_both_times_say_otherwise():
    assert modified_since(LATE, [EARLY, None])
    assert not modified_since(EARLY, [None, LATE])
    assert not modified_since(EARLY, [EARLY])  # at the sync: ours
    assert modified_since(None, [EARLY])  # unknown: maybe
    assert modified_since(EARLY, [None, None])


def test_a_time_given_as_a_date_only_is_not_precise():
    obj = company_object()
    assert obj.pull_list is not None
    incremental = {"cursorField": "/updatedOn", "format": "date"}
    dated = dataclasses.replace(obj, pull_list=dataclasses.replace(
        obj.pull_list, options={**obj.pull_list.options, "incremental": incremental}))
    record = {"updatedOn": "2025-06-01"}
    assert external_modified(dated, record) == datetime(2025, 6, 1, tzinfo=UTC)
    assert external_modified(dated, record, precise=True) is None
