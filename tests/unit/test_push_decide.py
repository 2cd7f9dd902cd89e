"""The push decision: create / update / delete / skip from record, link and permissions."""

import pytest

from services.pusher.decide import decide

ALL = ("create", "update", "delete")


@pytest.mark.parametrize(
    ("exists", "linked", "permitted", "supported", "expected"),
    [
        (True, False, ALL, ALL, "create"),
        (True, True, ALL, ALL, "update"),
        (False, True, ALL, ALL, "delete"),
        (False, False, ALL, ALL, "skip"),  # gone and never synchronized
        (True, False, ("update",), ALL, "skip"),  # an update event for an unlinked record
        (True, True, ("create",), ALL, "skip"),
        (False, True, ("create", "update"), ALL, "skip"),  # delete without permission
        (False, True, ALL, ("create", "update"), "skip"),  # connector cannot delete
        (True, True, ALL, ("create",), "skip"),
    ],
)
def test_decision_table(exists, linked, permitted, supported, expected):
    decision = decide(record_exists=exists, linked=linked, permitted=permitted,
                      supported=supported, entity="account")
    assert decision.action == expected
    assert (decision.reason is None) == (expected != "skip")


def test_skip_reasons_name_what_is_missing():
    no_permission = decide(record_exists=False, linked=True, permitted=("create",),
                           supported=ALL, entity="contact")
    assert no_permission.reason == ("the instance is not permitted to delete contact records "
                                    "(push)")
    unsupported = decide(record_exists=True, linked=True, permitted=ALL, supported=("create",),
                         entity="case")
    assert unsupported.reason == "the connector declares no push.update for case"


@pytest.mark.parametrize(
    ("exists", "permitted", "supported", "expected"),
    [
        (False, ALL, ALL, "delete"),  # gone, and a create of it may have made it remotely
        (True, ALL, ALL, "create"),  # still there: the create again (match, same key)
        (False, ("create", "update"), ALL, "skip"),  # may not delete
        (False, ALL, ("create", "update"), "skip"),  # the connector cannot delete
    ],
)
def test_a_pending_create_makes_a_gone_record_a_delete(exists, permitted, supported, expected):
    decision = decide(record_exists=exists, linked=False, permitted=permitted,
                      supported=supported, entity="account", create_pending=True)
    assert decision.action == expected
    assert "never synchronized" not in (decision.reason or "")
