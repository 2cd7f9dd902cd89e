"""Planning a pull (services.puller.plan): ids, tombstones, the canonical entity and its
schema, hashes and idempotency keys. Pure: no fakes needed beyond a link row."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from services.puller.plan import PullPlanner, canonical_hash, idempotency_key
from shared.errors import ConfigurationError, DependencyPending, MappingError, SchemaViolation
from shared.storage.links import Link
from shared.transform import LinksNotLoaded, PreloadedLinks, TransformContext
from tests.unit.puller.conftest import acme, acme_with, company, person

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def planner(entity: str = "account") -> PullPlanner:
    return PullPlanner(acme().objects_for(entity)[0])


def context(**bss: str | None) -> TransformContext:
    """A context whose links know ``bss`` (``"account:17": "bss-9"``)."""
    links = PreloadedLinks(bss={tuple(k.split(":")): v for k, v in bss.items()})
    target = acme()
    return TransformContext(lookups=target.lookups, links=links, variables={})


def link(**changes) -> Link:
    row = Link(id=7, instance_id="acme-1", entity="account", bss_id=None, external_id="17",
               state="creating", claim="m", claimed_at=T0, push_hash=None, pull_hash=None,
               last_pushed_at=None, last_pulled_at=None, last_error=None, created_at=T0,
               updated_at=T0)
    return dataclasses.replace(row, **changes)


# -- external id ---------------------------------------------------------------------------

def test_the_external_id_is_read_at_the_objects_pointer_as_text():
    assert planner().external_id(company(id=17)) == "17"
    assert planner().external_id(company(id="abc")) == "abc"


@pytest.mark.parametrize("record", [{"name": "no id"}, {"id": None}, {"id": ""},
                                    {"id": True}, {"id": {"x": 1}}])
def test_a_record_without_a_usable_id_is_a_mapping_error(record):
    with pytest.raises(MappingError, match="id"):
        planner().external_id(record)


# -- deleted -------------------------------------------------------------------------------

def test_a_delete_message_means_deleted_whatever_the_record_says():
    assert planner().deleted(company(), "delete") is True
    assert planner().deleted(None, "delete") is True


def test_without_a_tombstone_expression_a_listed_record_is_live():
    assert planner().deleted(company(archived=True), "upsert") is False


def test_the_tombstone_expression_decides(tmp_path):
    doc = acme_with(tmp_path, "Account", deleted="archived = true")
    deleted = PullPlanner(doc.objects_for("account")[0])
    assert deleted.deleted(company(archived=True), "update") is True
    assert deleted.deleted(company(archived=False), "update") is False
    assert deleted.deleted(company(), "update") is False  # no field: undefined → live


# -- canonical entity ----------------------------------------------------------------------

def test_the_canonical_account_is_the_pull_transform_of_the_record():
    entity = planner().canonical(company(), context())
    assert entity["name"] == "Globex Telecom"
    assert entity["code"] == "C-000977"
    assert entity["industry"] == "Telecommunications"  # the lookup, read backwards
    assert entity["addresses"][0]["city"] == "Berlin"
    assert "parentAccountId" not in entity  # null parent: left out


def test_a_linked_parent_becomes_its_bss_id():
    entity = planner("contact").canonical(person(companyId=17),
                                          context(**{"account:17": "bss-9"}))
    assert entity["accountId"] == "bss-9"


def test_a_parent_not_linked_yet_is_a_retryable_dependency():
    with pytest.raises(DependencyPending) as caught:
        planner("contact").canonical(person(companyId=17), context(**{"account:17": None}))
    assert caught.value.retryable
    assert (caught.value.entity, caught.value.record_id) == ("account", "17")


def test_a_parent_link_not_loaded_asks_for_it():
    with pytest.raises(LinksNotLoaded) as caught:
        planner("contact").canonical(person(companyId=17), context())
    assert caught.value.wanted == [("bss", "account", "17")]


def test_a_record_breaking_the_entity_schema_names_every_pointer():
    with pytest.raises(SchemaViolation) as caught:
        planner().canonical(company(email="not-an-email", employees="many"), context())
    message = str(caught.value)
    assert "entities/account.schema.json" in message
    assert "/email: is not a valid email" in message
    assert "/numberOfEmployees:" in message
    assert not caught.value.retryable
    assert [v["pointer"] for v in caught.value.details["violations"]] == [
        "/email", "/numberOfEmployees"]


def test_a_missing_required_field_is_named_at_its_objects_pointer():
    with pytest.raises(SchemaViolation, match="/: the required property 'name' is missing"):
        planner().canonical(company(name=None), context())


def test_many_violations_are_capped_and_counted():
    with pytest.raises(SchemaViolation, match="and 2 more") as caught:
        planner().check({"name": "x", **{f"extra{i}": i for i in range(12)}})
    assert len(caught.value.details["violations"]) == 10


def test_an_object_without_a_pull_transform_is_a_configuration_error():
    doc = acme()
    obj = dataclasses.replace(doc.objects_for("account")[0], pull_body=None)
    with pytest.raises(ConfigurationError, match=r"no pull\.body"):
        PullPlanner(obj).canonical(company(), context())


# -- hashes and keys -----------------------------------------------------------------------

def test_the_hash_ignores_key_order_and_sees_every_value():
    assert canonical_hash({"a": 1, "b": [1, 2]}) == canonical_hash({"b": [1, 2], "a": 1})
    assert canonical_hash({"a": 1}) != canonical_hash({"a": 2})


def test_the_idempotency_key_is_the_same_for_every_delivery_of_one_create():
    row = link()
    first = idempotency_key("acme-1", "account", "17", row)
    again = idempotency_key("acme-1", "account", "17",
                            dataclasses.replace(row, claim="other", last_error="boom"))
    assert first == again


def test_another_record_or_a_later_life_of_the_link_gets_another_key():
    row = link()
    first = idempotency_key("acme-1", "account", "17", row)
    assert idempotency_key("acme-1", "account", "18", row) != first
    assert idempotency_key("acme-2", "account", "17", row) != first
    assert idempotency_key("acme-1", "account", "17", dataclasses.replace(row, id=8)) != first
    assert idempotency_key("acme-1", "account", "17",
                           dataclasses.replace(row, last_pulled_at=T0)) != first
