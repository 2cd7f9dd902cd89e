"""The pull decision, branch by branch (services.puller.decide)."""

from __future__ import annotations

import pytest

from services.puller.decide import CREATE, DELETE, SKIP, UPDATE, decide

ALL = ("create", "update", "delete")


@pytest.mark.parametrize(("deleted", "linked", "bss_exists", "action"), [
    (False, False, True, CREATE),
    (False, False, False, CREATE),  # not linked: whether a BSS record exists is moot
    (False, True, True, UPDATE),
    (True, True, True, DELETE),
])
def test_the_action_follows_the_record_and_its_link(deleted, linked, bss_exists, action):
    decision = decide(deleted=deleted, linked=linked, bss_exists=bss_exists, permitted=ALL,
                      entity="account")
    assert (decision.action, decision.reason, decision.skipped) == (action, None, False)


@pytest.mark.parametrize(("deleted", "linked", "bss_exists", "reason"), [
    (True, False, True, "the external account is deleted and was never synchronized"),
    (True, True, False, "the external account is deleted and its BSS record is gone"),
    (False, True, False, "the linked BSS account was deleted in the BSS"),
])
def test_nothing_to_do_is_a_skip_with_its_reason(deleted, linked, bss_exists, reason):
    decision = decide(deleted=deleted, linked=linked, bss_exists=bss_exists, permitted=ALL,
                      entity="account")
    assert decision.skipped and decision.action == SKIP
    assert decision.reason is not None and decision.reason.startswith(reason)


@pytest.mark.parametrize(("deleted", "linked", "action"), [
    (False, False, "create"), (False, True, "update"), (True, True, "delete")])
def test_an_action_not_permitted_is_skipped_naming_it(deleted, linked, action):
    permitted = [a for a in ALL if a != action]
    decision = decide(deleted=deleted, linked=linked, permitted=permitted, entity="contact")
    assert decision.skipped
    assert decision.reason == (f"the instance is not permitted to {action} contact records "
                               "(pull)")


def test_a_permission_for_another_action_does_not_allow_this_one():
    assert decide(deleted=False, linked=False, permitted=["update", "delete"],
                  entity="case").skipped
    assert not decide(deleted=False, linked=False, permitted=["create"], entity="case").skipped
