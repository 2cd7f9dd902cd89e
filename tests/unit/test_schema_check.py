"""The pinned schema check (``shared.schema_check``): what the pin covers, and when the
fast check runs. The checks' agreement with jsonschema is tested beside each check
(``test_envelope.py``, ``test_dispatch_and_references.py``)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from services.dispatcher import events
from shared import schema_check
from shared.errors import InvalidMessage
from shared.messaging import envelope
from shared.schema_check import PinnedSchemaCheck, rules_digest, rules_of, rules_sha256
from shared.settings import get_settings

BASE = "https://example.test/"
COMMON = {"$defs": {"id": {"type": "string", "maxLength": 9, "description": "an id"}}}
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Thing", "description": "A thing.", "$comment": "reviewed",
    "type": "object", "required": ["id"], "additionalProperties": False,
    "properties": {
        "id": {"$ref": "common.json#/$defs/id", "description": "its id"},
        "kind": {"enum": ["a", "b"], "examples": ["a"], "default": "a"},
        "description": {"type": "string", "title": "a property named description"},
        "tags": {"type": "array", "items": {"type": "string", "description": "one tag"}},
        "when": {"anyOf": [{"type": "null"}, {"type": "string", "format": "date-time",
                                              "deprecated": True}]},
    },
}


def digest(schema: dict[str, Any], common: dict[str, Any] = COMMON) -> str:
    known = Registry().with_resources([
        (BASE + "common.json", Resource.from_contents(common, DRAFT202012)),
        (BASE + "thing.json", Resource.from_contents(schema, DRAFT202012))])
    return rules_digest(schema, BASE + "thing.json", known)


def edited(change: Callable[[dict[str, Any]], None], base: dict[str, Any] = SCHEMA
           ) -> dict[str, Any]:
    copied = copy.deepcopy(base)
    change(copied)
    return copied


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split("/")

    def change(schema: dict[str, Any]) -> None:
        node: Any = schema
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value
    return change


@pytest.mark.parametrize("change", [
    _set("description", "Reworded."), _set("title", "Another"), _set("$comment", "again"),
    _set("properties/id/description", "reworded"), _set("properties/kind/examples", ["b"]),
    _set("properties/kind/default", "b"), _set("properties/tags/items/description", "x"),
    _set("properties/when/anyOf/1/deprecated", False),
    _set("properties/description/title", "renamed annotation"),
])
def test_rewording_an_annotation_keeps_the_pin(change: Callable[[dict[str, Any]], None]) -> None:
    assert digest(edited(change)) == digest(SCHEMA)


@pytest.mark.parametrize("change", [
    _set("required", ["id", "kind"]), _set("additionalProperties", True),
    _set("properties/kind/enum", ["a", "b", "c"]), _set("properties/tags/items/maxLength", 3),
    _set("properties/when/anyOf/1/format", "date"), _set("properties/id/minLength", 2),
    _set("properties/description/type", "integer"),
])
def test_changing_a_rule_changes_the_pin(change: Callable[[dict[str, Any]], None]) -> None:
    assert digest(edited(change)) != digest(SCHEMA)


def test_a_property_named_like_an_annotation_is_a_rule() -> None:
    without = edited(lambda s: s["properties"].pop("description"))
    assert digest(without) != digest(SCHEMA)
    assert "description" in rules_of(SCHEMA)["properties"]
    assert rules_of({"enum": [{"description": "a"}]}) == {"enum": [{"description": "a"}]}


def test_the_pin_covers_what_a_ref_reaches() -> None:
    longer = edited(_set("$defs/id/maxLength", 10), COMMON)
    reworded = edited(_set("$defs/id/description", "reworded"), COMMON)
    assert digest(SCHEMA, longer) != digest(SCHEMA)
    assert digest(SCHEMA, reworded) == digest(SCHEMA)


def test_a_ref_under_a_property_named_like_an_annotation_is_followed() -> None:
    schema = edited(_set("properties/description", {"$ref": "common.json#/$defs/id"}))
    longer = edited(_set("$defs/id/maxLength", 10), COMMON)
    assert digest(schema, longer) != digest(schema)
    assert digest({"const": {"$ref": "nowhere.json"}}) != digest({"const": {}})  # data


def test_the_real_schemas_rules_ignore_their_descriptions() -> None:
    schema = json.loads(json.dumps(envelope.ENVELOPE_CHECK.validator.schema))
    schema["description"] = "reworded"
    schema["properties"]["id"]["description"] = "reworded too"
    assert rules_of(schema) == rules_of(envelope.ENVELOPE_CHECK.validator.schema)
    assert rules_sha256("sync-message") == envelope.ENVELOPE_RULES_SHA256


# -- when the fast check runs -----------------------------------------------------------


class Counted:
    """A fast check that counts its calls and answers as the real one."""

    def __init__(self, fast: Callable[[Any], bool]) -> None:
        self.fast = fast
        self.calls = 0

    def __call__(self, document: Any) -> bool:
        self.calls += 1
        return self.fast(document)


@pytest.fixture
def schema_checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    def choose(value: str) -> None:
        monkeypatch.setenv("SCHEMA_CHECKS", value)
        get_settings.cache_clear()
    yield choose
    get_settings.cache_clear()


EVENT = {"id": "e-1", "entity": "account", "event": "updated", "organizationId": "acme",
         "recordId": "acc-1", "occurredAt": "2026-11-28T10:00:00Z"}


def event_check(fast: Counted, pin: str = events.EVENT_RULES_SHA256) -> PinnedSchemaCheck:
    return PinnedSchemaCheck("bss-event", fast, pin, subject="the event", formats=False)


def test_the_fast_check_runs_by_default(schema_checks: Callable[[str], None]) -> None:
    schema_checks("fast")
    fast = Counted(events.conforms)
    check = event_check(fast)
    check.check(EVENT)
    assert fast.calls == 1 and check.fast_enabled


def test_schema_checks_jsonschema_turns_the_fast_check_off(
        schema_checks: Callable[[str], None]) -> None:
    schema_checks("jsonschema")
    fast = Counted(events.conforms)
    check = event_check(fast)
    check.check(EVENT)
    with pytest.raises(InvalidMessage, match=r"the event breaks bss-event\.schema\.json at "
                                             r"/organizationId: "):
        check.check({**EVENT, "organizationId": "a b"})
    assert fast.calls == 0 and not check.fast_enabled


def test_a_pin_that_no_longer_matches_turns_the_fast_check_off(
        schema_checks: Callable[[str], None]) -> None:
    schema_checks("fast")
    fast = Counted(events.conforms)
    check = event_check(fast, pin="0" * 64)
    check.check(EVENT)
    with pytest.raises(InvalidMessage, match="/recordId"):
        check.check({**EVENT, "recordId": ""})
    assert fast.calls == 0


def test_the_setting_is_read_once_per_check(schema_checks: Callable[[str], None]) -> None:
    schema_checks("fast")
    fast = Counted(events.conforms)
    check = event_check(fast)
    check.check(EVENT)
    schema_checks("jsonschema")  # too late: decided at the first document
    check.check(EVENT)
    assert fast.calls == 2


def test_decoding_an_envelope_goes_through_the_switch(
        schema_checks: Callable[[str], None], monkeypatch: pytest.MonkeyPatch) -> None:
    """Observable, not read back: which check runs when a message is decoded. With the
    fast checks on, a plain envelope is taken by the typed parse alone, one it is too
    strict for (an integral float attempt) by ``conforms``; with them off, jsonschema
    judges both."""
    message = envelope.SyncMessage(
        id="3f1e6a4c-1b2d-4c3e-9f00-0123456789ab", direction="push", org_id="o",
        instance_id="i", entity="account", action="update", trigger="event", attempt=0,
        created_at="2026-01-02T03:04:05Z", record_id="r")
    plain = envelope.encode(message)
    float_attempt = plain.replace(b'"attempt":0', b'"attempt":2.0')
    judged: list[Any] = []  # jsonschema's verdicts, through the helper's best_match
    real_best_match = schema_check.best_match
    monkeypatch.setattr(schema_check, "best_match",
                        lambda errors: judged.append(1) or real_best_match(errors))
    typed = Counted(envelope._fast_decoder().decode)
    monkeypatch.setattr(envelope, "_fast_decoder", lambda: SimpleNamespace(decode=typed))
    for setting, expected in (("fast", [(1, 0, 0), (1, 1, 0)]),
                              ("jsonschema", [(0, 0, 1), (0, 0, 1)])):
        schema_checks(setting)
        fast = Counted(envelope.conforms)
        check = PinnedSchemaCheck("sync-message", fast, envelope.ENVELOPE_RULES_SHA256,
                                  subject="the envelope", formats=True)
        monkeypatch.setattr(envelope, "ENVELOPE_CHECK", check)
        seen = []
        for body in (plain, float_attempt):
            typed.calls = fast.calls = 0
            judged.clear()
            assert envelope.decode_sync_message(body).record_id == "r"
            seen.append((typed.calls, fast.calls, len(judged)))
        assert seen == expected, setting
