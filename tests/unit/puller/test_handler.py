"""The pull handler: what it skips before the record is looked at, and what it hands
the runtime for the audit row."""

from __future__ import annotations

import dataclasses

from shared.audit import Outcome
from tests.unit.puller.conftest import INSTANCE, World, company
from tests.unit.pusher.fakes import FakeInstances, instance


async def test_the_result_names_the_bss_record_for_the_audit_row(world: World):
    result = await world.handle("account", company())
    assert result.outcome is Outcome.CREATED
    assert result.record_id == world.link("account", "17").bss_id
    assert (result.external_id, result.http_status) == ("17", 201)


async def test_a_push_message_on_the_pull_queue_is_skipped(world: World):
    result = await world.handle("account", company(), direction="push")
    assert result.outcome is Outcome.SKIPPED
    assert result.details == {"reason": "a push message on the pull queue"}
    assert world.bss.writes == []


async def test_messages_for_unknown_inactive_or_foreign_instances_are_skipped(world: World):
    world.handler.registry = FakeInstances()
    assert (await world.handle("account", company())).details == {
        "reason": f"instance {INSTANCE} does not exist"}

    world.use(dataclasses.replace(world.target.instance, active=False))
    assert (await world.handle("account", company())).details == {
        "reason": f"instance {INSTANCE} is inactive"}

    world.use(instance(INSTANCE, org_id="org-2", permissions=world.target.instance.permissions))
    assert (await world.handle("account", company())).details == {
        "reason": f"instance {INSTANCE} belongs to another organization"}
    assert world.bss.writes == []


async def test_an_entity_the_connector_does_not_pull_is_skipped(world: World):
    result = await world.handle("invoice", {"id": 1})
    assert result.outcome is Outcome.SKIPPED
    assert result.details == {"reason": "connector acme-crm does not pull invoice"}


async def test_an_entity_the_instance_may_not_pull_at_all_is_skipped(world: World):
    world.permit(("contact", "create"))
    result = await world.handle("account", company())
    assert result.details == {"reason": "the instance may not pull account records"}
    assert world.bss.writes == [] and world.link("account", "17") is None


async def test_aclose_closes_the_clients(world: World):
    await world.handler.aclose()
    assert world.bss.closed and world.handler.registry.closed
