"""The one translator from jsonschema errors to located sentences (shared.schema_errors)."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator, ValidationError

from shared.schema_errors import LocatedSentence, located_sentences

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "kind"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "kind": {"enum": ["company", "person"]},
        "token": {"type": "string", "pattern": "^env:"},
        "size": {"type": "integer", "minimum": 1},
        "tags": {"type": "array", "uniqueItems": True},
        "fields": {"type": "object", "propertyNames": {"enum": ["email", "phone"]}},
        "paging": {"oneOf": [
            {"type": "object", "required": ["style"], "additionalProperties": False,
             "properties": {"style": {"const": "none"}}},
            {"type": "object", "required": ["style", "param"], "additionalProperties": False,
             "properties": {"style": {"const": "cursor"}, "param": {"type": "string"}}},
        ]},
    },
}


def sentences(instance: Any, **options: Any) -> list[tuple[str, str]]:
    errors = Draft202012Validator(SCHEMA).iter_errors(instance)
    return [tuple(found) for found in located_sentences(errors, **options)]


def test_a_valid_value_has_no_findings() -> None:
    assert sentences({"name": "x", "kind": "person"}) == []


def test_each_missing_property_is_one_finding_at_its_object() -> None:
    assert sentences({}) == [("", "the required property 'name' is missing"),
                             ("", "the required property 'kind' is missing")]


def test_an_unknown_key_is_located_at_the_key_with_the_nearest_allowed_one() -> None:
    [(pointer, sentence)] = sentences({"name": "x", "kind": "person", "nmae": "y"})
    assert pointer == "/nmae"
    assert sentence.startswith("unknown key 'nmae' (did you mean 'name'?); allowed: fields, kind")


def test_enum_suggests_the_nearest_value() -> None:
    assert sentences({"name": "x", "kind": "persn"}) == [
        ("/kind", "'persn' is not one of: company, person — did you mean 'person'?")]


def test_a_key_that_breaks_property_names_is_located_at_the_key() -> None:
    found = sentences({"name": "x", "kind": "person", "fields": {"emial": 1}})
    assert found == [("/fields/emial",
                      "unknown key 'emial' (did you mean 'email'?); allowed: email, phone")]


def test_a_value_that_breaks_a_pattern_is_never_quoted() -> None:
    found = sentences({"name": "x", "kind": "person", "token": "sk_live_secret"})
    assert found == [("/token", "does not have the expected form (pattern ^env:)")]
    assert "sk_live_secret" not in repr(found)


def test_types_bounds_and_duplicates_are_plain_sentences() -> None:
    found = sentences({"name": "", "kind": "person", "size": 0, "tags": [1, 1]})
    assert found == [("/name", "must not be empty"), ("/size", "must be at least 1"),
                     ("/tags", "lists the same value more than once")]
    assert sentences({"name": 3, "kind": "person"}) == [("/name", "must be a string, not an "
                                                                  "integer")]
    assert sentences([1]) == [("", "must be an object, not a list")]


def test_a_failed_one_of_is_explained_by_its_most_relevant_branch() -> None:
    found = sentences({"name": "x", "kind": "person", "paging": {"style": "cursor"}})
    assert found == [("/paging", "the required property 'param' is missing")]


def test_the_base_pointer_places_the_findings_in_a_larger_document() -> None:
    assert sentences({"name": "x"}, base_pointer="/x-sync/objects/A") == [
        ("/x-sync/objects/A", "the required property 'kind' is missing")]


def test_a_wording_is_asked_first_and_may_decline() -> None:
    asked: list[str] = []

    def wording(error: ValidationError, pointer: str) -> str | None:
        asked.append(pointer)
        return "a name is what people call it" if pointer == "/name" else None

    found = located_sentences(
        Draft202012Validator(SCHEMA).iter_errors({"name": 3, "kind": "persn"}), wording=wording)
    assert found == [LocatedSentence("/kind", "'persn' is not one of: company, person — did you "
                                              "mean 'person'?"),
                     LocatedSentence("/name", "a name is what people call it")]
    assert sorted(asked) == ["/kind", "/name"]
