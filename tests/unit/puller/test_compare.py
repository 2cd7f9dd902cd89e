"""Comparing a linked record with its last sync (services.puller.decide.compare) and
whether the BSS holds the pulled entity already (services.puller.plan.holds): pure."""

from __future__ import annotations

import pytest

from services.puller.decide import BSS_ONLY, CONFLICT, IN_STEP, UNCHANGED, UPDATE, compare
from services.puller.plan import holds


@pytest.mark.parametrize(("external_changed", "bss_holds", "bss_changed", "expected"), [
    (False, False, False, UNCHANGED),
    (False, False, True, UNCHANGED),  # only the BSS changed: its push carries it
    (True, True, False, IN_STEP),  # our own push, listed again
    (True, True, True, IN_STEP),  # the same change made on both sides
    (True, False, False, UPDATE),
    (True, False, True, CONFLICT),
])
def test_compare(external_changed, bss_holds, bss_changed, expected):
    assert compare(external_changed=external_changed, bss_holds=bss_holds,
                   bss_changed=bss_changed) == expected


@pytest.mark.parametrize(("bss_changed", "expected"), [(True, BSS_ONLY), (False, UPDATE)])
def test_a_record_shown_otherwise_but_not_modified_since_the_sync_is_no_conflict(
        bss_changed, expected):
    assert compare(external_changed=True, bss_holds=False, bss_changed=bss_changed,
                   modified_since=False) == expected


RECORD = {"id": "acc_1", "name": "Globex", "numberOfEmployees": 1250, "active": True,
          "addresses": [{"type": "billing", "city": "Berlin", "line2": None}],
          "meta": {"tier": "gold", "score": 1.5}, "updatedAt": "2025-06-01T10:00:00Z"}


@pytest.mark.parametrize("patch", [
    {},
    {"name": "Globex"},
    {"numberOfEmployees": 1250.0},  # numbers by value
    {"email": None},  # null: absent either way
    {"addresses": [{"type": "billing", "city": "Berlin"}]},  # a null member is one absent
    {"meta": {"tier": "gold"}},  # objects merge member by member
])
def test_the_bss_holds_what_changes_nothing(patch):
    assert holds(RECORD, patch)


@pytest.mark.parametrize("patch", [
    {"name": "Globex Telecom"},
    {"email": "billing@globex.example"},  # a value where the BSS has none
    {"name": None},  # a null removes a value the BSS has
    {"active": 1},  # true is not 1
    {"numberOfEmployees": "1250"},
    {"addresses": []},  # arrays are replaced whole
    {"addresses": [{"type": "billing", "city": "Berlin", "line1": "Friedrichstr. 68"}]},
    {"meta": {"tier": "silver"}},
    {"meta": "gold"},
    {"name": {"first": "Globex"}},
])
def test_the_bss_does_not_hold_what_would_change_it(patch):
    assert not holds(RECORD, patch)
