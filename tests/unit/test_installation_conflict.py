"""An instance's conflict policy override in the installation file: validated, then kept
in the instance's settings where ``Instance.conflict_override`` reads it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from shared.installation import desired_state
from tests.unit.test_storage_installation import base, problems

INSTANCE = "/organizations/0/instances/0"


def with_instance(**fields: Any) -> dict[str, Any]:
    data = base()
    data["organizations"][0]["instances"][0].update(fields)
    return data


@pytest.mark.parametrize("conflict", ["bss-wins", "external-wins", "newest-wins",
                                      {"account": "newest-wins", "contact": "bss-wins"}, {}])
def test_a_policy_for_every_entity_or_per_entity_is_valid(conflict: Any) -> None:
    assert problems(with_instance(conflict=conflict)) == []


@pytest.mark.parametrize(("conflict", "problem"), [
    ("crm-wins", ("/conflict", "'crm-wins' is not one of: bss-wins, external-wins, "
                               "newest-wins — did you mean 'bss-wins'?")),
    ({"account": "latest-wins"}, ("/conflict/account", "'latest-wins' is not one of: "
                                  "bss-wins, external-wins, newest-wins — did you mean "
                                  "'newest-wins'?")),
    ({"widget": "bss-wins"}, ("/conflict/widget", "unknown entity 'widget'; entities are "
                              "account, contact, order, invoice, product, payment, case, "
                              "subscription")),
    (["bss-wins"], ("/conflict", "must be a string or an object, not a list")),
])
def test_anything_else_is_refused_where_it_is(conflict: Any, problem: tuple[str, str]) -> None:
    pointer, message = problem
    assert problems(with_instance(conflict=conflict)) == [(INSTANCE + pointer, message)]


def test_a_policy_hidden_in_the_free_form_settings_is_refused() -> None:
    assert problems(with_instance(settings={"conflict": "external-wins"})) == [
        (f"{INSTANCE}/settings/conflict", "the conflict policy belongs at the instance's top "
                                          "level (conflict), not under settings")]


def test_the_override_is_kept_in_the_instance_settings() -> None:
    data = with_instance(conflict={"account": "external-wins"})
    document = SimpleNamespace(title="Acme", version="1", sha256="0" * 64, document={})
    [instance] = desired_state(data, {"acme": document}).instances
    assert instance.settings == {"conflict": {"account": "external-wins"}}
