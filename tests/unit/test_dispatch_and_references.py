"""Pure parts of the push path: event fan-out, record references, instance settings."""

from __future__ import annotations

import dataclasses
import json
import random
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pika.compat import long

from services.dispatcher.events import EVENT_CODEC, push_messages
from shared.connector import load_connector
from shared.errors import InvalidMessage
from shared.messaging.envelope import decode_sync_message
from shared.references import reference_paths, references
from shared.runtime.registry import effective_lookups, effective_variables
from shared.storage.instances import Instance
from tests.unit.schema_verdicts import disagreements

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "entities"


def instance(instance_id: str, **kw: object) -> Instance:
    now = datetime.now(UTC)
    values = dict(id=instance_id, org_id="acme", connector_id="acme-crm", name=instance_id,
                  server_url=None, variables={}, credentials={}, settings={}, active=True,
                  created_at=now, updated_at=now, deactivated_at=None, connector_sha256="0" * 64,
                  org_active=True, permissions=frozenset({("account", "push", "create")}))
    values.update(kw)
    return Instance(**values)  # type: ignore[arg-type]


EVENT = {"id": "5b6f0a53-8a55-4f5e-9a1f-0e2d6c1a9b11", "entity": "account", "event": "updated",
         "organizationId": "acme", "recordId": "acc-1", "occurredAt": "2026-11-28T10:00:00Z",
         "origin": None}


def test_an_event_becomes_one_valid_push_message_per_instance():
    messages = push_messages(EVENT, [instance("crm"), instance("erp")])
    assert [m.routing_key for m in messages] == ["account.update.acme.crm",
                                                 "account.update.acme.erp"]
    decoded = [decode_sync_message(m.body) for m in messages]
    assert {d.instance_id for d in decoded} == {"crm", "erp"}
    assert all(d.record_id == "acc-1" and d.trigger == "event" and d.attempt == 0
               and d.correlation_id == EVENT["id"] for d in decoded)
    assert len({d.id for d in decoded}) == 2
    assert all(uuid.UUID(d.id).version == 7 for d in decoded)  # time-ordered (shared/ids.py)


def test_a_change_is_not_pushed_back_to_the_instance_it_came_from():
    messages = push_messages({**EVENT, "origin": "crm"}, [instance("crm"), instance("erp")])
    assert [m.routing_key.rsplit(".", 1)[1] for m in messages] == ["erp"]


@pytest.mark.parametrize(("event", "action"), [("created", "create"), ("updated", "update"),
                                               ("deleted", "delete")])
def test_event_kinds_map_to_actions(event, action):
    (message,) = push_messages({**EVENT, "event": event}, [instance("crm")])
    assert decode_sync_message(message.body).action == action


def test_event_codec_reads_valid_events_and_refuses_others():
    decoded = EVENT_CODEC.decode(json.dumps(EVENT).encode(), None)
    context = decoded.context
    assert (context.org_id, context.entity, context.record_id) == ("acme", "account", "acc-1")
    with pytest.raises(InvalidMessage, match="not JSON"):
        EVENT_CODEC.decode(b"{nope", None)
    with pytest.raises(InvalidMessage, match=r"bss-event\.schema\.json at /event"):
        EVENT_CODEC.decode(json.dumps({**EVENT, "event": "archived"}).encode(), None)
    other = EVENT_CODEC.decode(json.dumps({**EVENT, "entity": "quote"}).encode(), None)
    assert other.context.entity == "quote"  # a BSS entity bss-sync does not sync: the handler skips


async def test_events_of_unknown_entities_are_skipped_not_dead_lettered():
    from services.dispatcher.events import EventHandler

    handler = EventHandler(instances=None, organizations=None, publisher=None)  # type: ignore[arg-type]
    message = EVENT_CODEC.decode(json.dumps({**EVENT, "entity": "quote"}).encode(), None)
    result = await handler(message)
    assert result.outcome == "skipped"
    assert result.details == {"reason": "bss-sync does not synchronize quote records"}


def test_references_follow_the_schemas_marks_into_arrays():
    invoice = json.loads((DATA / "invoice.json").read_text())
    found = references("invoice", invoice)
    assert ("account", invoice["accountId"]) in found
    products = {line["productId"] for line in invoice["lines"] if line.get("productId")}
    assert {ref for entity, ref in found if entity == "product"} == products
    assert (("lines", "[]", "productId"), "product") in reference_paths("invoice")
    assert references("contact", {"lastName": "x", "accountId": None}) == []


def test_instance_lookups_overlay_the_connectors_and_variables_layer():
    connector = load_connector(ROOT / "connectors" / "acme-crm.json")
    tables = effective_lookups(connector, {"industry": {"Transportation": "OTHER"},
                                           "region": {"EU": "EMEA"}})
    assert tables["industry"].values["Transportation"] == "OTHER"
    assert tables["industry"].values["Software"] == "SOFTWARE", "connector entries stay"
    assert tables["region"].values == {"EU": "EMEA"}
    variables = effective_variables(connector, dataclasses.replace(
        instance("crm"), variables={"host": "crm.example"}))
    assert variables == {"scheme": "http", "host": "crm.example", "port": "3000"}


# The event fast check: never more lenient than the schema, and it takes the usual events.
_ODD: list[Any] = [None, True, 0, 1.5, "", "x", "a b", "Account", "account", "account\n",
                   "created", "archived", "x" * 129, "y" * 256, [], ["a", "a"], ["a", "b"],
                   [1], [""], {}, {"a": 1}, "2026-01-01T00:00:00Z", "t" * 64, "t" * 65,
                   [f"f{i}" for i in range(1000)], [f"f{i}" for i in range(1001)]]


def _event_mutations() -> list[Any]:
    base = {**EVENT, "origin": "crm-1", "data": {"name": "A"}, "changedFields": ["name"]}
    docs: list[Any] = [[], "event", None]
    for key in [*base, "extra"]:
        docs.append({k: v for k, v in base.items() if k != key})
        docs += [{**base, key: value} for value in _ODD]
    rng = random.Random(11)
    for _ in range(400):
        doc = dict(base)
        for key in rng.sample(sorted(base), 2):
            doc[key] = rng.choice(_ODD)
        docs.append(doc)
    return docs


def test_the_event_fast_check_was_reviewed_against_this_schema() -> None:
    """If this fails the event schema's rules changed (or those of a schema it refers
    to): review ``conforms`` and update the hash."""
    from services.dispatcher.events import EVENT_RULES_SHA256
    from shared.schema_check import rules_sha256

    assert rules_sha256("bss-event") == EVENT_RULES_SHA256


def test_the_event_fast_check_is_never_more_lenient_and_takes_valid_events() -> None:
    from services.dispatcher.events import EVENT_CHECK, conforms

    schema_ok = EVENT_CHECK.validator.is_valid
    docs = _event_mutations()
    assert [d for d in docs if conforms(d) and not schema_ok(d)] == []
    valid = [d for d in docs if schema_ok(d)]
    assert len(valid) > 100
    assert [d for d in valid if not conforms(d)] == []


@pytest.mark.parametrize("fast_enabled", [True, False])
def test_the_event_check_judges_every_mutation_as_jsonschema_does(fast_enabled: bool) -> None:
    """Through the shared helper, fast check on and off: the same verdicts."""
    from services.dispatcher.events import EVENT_RULES_SHA256, conforms
    from shared.schema_check import PinnedSchemaCheck

    check = PinnedSchemaCheck("bss-event", conforms, EVENT_RULES_SHA256, subject="the event",
                              formats=False, fast_enabled=fast_enabled)
    assert disagreements(check, _event_mutations()) == []


def test_an_events_strings_and_lists_are_bounded() -> None:
    for change, where in (({"occurredAt": "2026-11-28T10:00:00." + "0" * 60 + "Z"}, "/occurredAt"),
                          ({"changedFields": [f"f{i}" for i in range(1001)]}, "/changedFields"),
                          ({"recordId": "r" * 256}, "/recordId")):
        with pytest.raises(InvalidMessage, match=f"at {where}"):
            EVENT_CODEC.decode(json.dumps({**EVENT, **change}).encode(), None)


def test_an_event_holding_a_lone_surrogate_is_refused_with_its_place() -> None:
    body = json.dumps({**EVENT, "recordId": "acc-\ud800"}).encode()
    with pytest.raises(InvalidMessage, match="/recordId holds a lone surrogate"):
        EVENT_CODEC.decode(body, None)


@pytest.mark.parametrize(("header", "attempt"), [(None, 0), (0, 0), (3, 3), ("7", 7),
                                                 (b"12", 12), (1000, 1000), (long(9), 9)])
def test_the_x_attempt_header_gives_an_events_attempt(header: Any, attempt: int) -> None:
    import pika

    headers = {} if header is None else {"x-attempt": header}
    decoded = EVENT_CODEC.decode(json.dumps(EVENT).encode(), pika.BasicProperties(headers=headers))
    assert decoded.context.attempt == attempt


@pytest.mark.parametrize("header", [2**31, long(2**31), 1001, -1, "abc", "²", 2.5, True, [1],
                                    "9" * 50])
def test_an_absurd_x_attempt_header_is_an_invalid_message(header: Any) -> None:
    import pika

    props = pika.BasicProperties(headers={"x-attempt": header})
    with pytest.raises(InvalidMessage, match=r"the x-attempt header is .*: an attempt is an "
                                             r"integer from 0 to 1000"):
        EVENT_CODEC.decode(json.dumps(EVENT).encode(), props)
