"""Answer pointers checked against the operation's 2xx response schemas
(tests/data/vendor/answers.yaml): ``push.externalId``, ``records``, ``pull.externalId``, a
match's and a ``deletedList``'s ``externalId`` that the answer cannot hold are located
errors at validation, not failures record after record at run time."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shared.connector import check_connector
from shared.connector.answer_pointers import may_hold

ROOT = Path(__file__).resolve().parents[2]
ANSWERS = ROOT / "tests" / "data" / "vendor" / "answers.yaml"
CONTACT = "/x-synchronization/objects/Contact"


def variant(tmp_path: Path, change) -> Path:
    spec = yaml.safe_load(ANSWERS.read_text())
    change(spec["x-synchronization"]["objects"]["Contact"])
    path = tmp_path / "answers.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def errors(path: Path) -> list[tuple[str, str]]:
    document, problems = check_connector(path)
    assert document is None
    return [(p.pointer, p.message) for p in problems if p.severity == "error"]


def test_pointers_the_answers_hold_pass():
    document, problems = check_connector(ANSWERS)
    assert document is not None, [p.format() for p in problems]
    assert problems == []


def set_key(*path: str, value):
    """A change setting the key at ``path`` of the Contact object (``None``: removing it)."""
    def change(contact):
        node = contact
        for key in path[:-1]:
            node = node[key]
        if value is None:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return change


@pytest.mark.parametrize(("change", "pointer", "message"), [
    (set_key("push", "externalId", value="/id"), f"{CONTACT}/push/externalId",
     "externalId '/id': what POST /contacts answers (2XX) cannot hold /id: its response "
     "schema has no 'id' at /"),
    (set_key("push", "externalId", value="/data/id"), f"{CONTACT}/push/externalId",
     "externalId '/data/id': what POST /contacts answers (2XX) cannot hold /data/id: its "
     "response schema has no 'id' at /data"),
    (set_key("push", "match", "records", value="/results"), f"{CONTACT}/push/match/records",
     "records '/results': what GET /contacts/search answers (200) cannot hold /results: its "
     "response schema has no 'results' at /"),
    (set_key("push", "match", "externalId", value="/id"), f"{CONTACT}/push/match/externalId",
     "externalId '/id': what GET /contacts/search answers (200) cannot hold /0/id: its "
     "response schema has no 'id' at /0"),
    (set_key("pull", "list", "records", value=None), f"{CONTACT}/pull/list",
     "records '' (by default): what GET /contacts answers (200) cannot hold /0: its "
     "response schema has no item at / (not an array)"),
    (set_key("pull", "list", "records", value="/items/0/name"), f"{CONTACT}/pull/list/records",
     "records '/items/0/name': what GET /contacts answers (200) cannot hold "
     "/items/0/name/0: its response schema has no item at /items/0/name (not an array)"),
    (set_key("pull", "externalId", value="/contactId"), f"{CONTACT}/pull/externalId",
     "externalId '/contactId': what GET /contacts answers (200) cannot hold "
     "/items/0/contactId: its response schema has no 'contactId' at /items/0"),
    (set_key("pull", "deletedList", "externalId", value="/id"),
     f"{CONTACT}/pull/deletedList/externalId",
     "externalId '/id': what GET /contacts/deleted answers (200) cannot hold /ids/0/id: "
     "its response schema has no 'id' at /ids/0"),
])
def test_a_pointer_the_answer_cannot_hold_is_a_located_error(tmp_path, change, pointer,
                                                              message):
    path = variant(tmp_path, change)
    found = errors(path)
    assert (pointer, message) in found, found
    if pointer == f"{CONTACT}/pull/externalId":  # the read answers the record itself
        assert (pointer, "externalId '/contactId': what GET /contacts/{id} answers (200) "
                         "cannot hold /contactId: its response schema has no 'contactId' "
                         "at /") in found


def test_the_default_id_is_reported_at_the_call_that_uses_it(tmp_path):
    found = errors(variant(tmp_path, lambda c: c["push"].pop("externalId")))
    assert found == [(f"{CONTACT}/push/create",
                      "externalId '/id' (push.externalId, by default): what POST /contacts "
                      "answers (2XX) cannot hold /id: its response schema has no 'id' at /")]


def test_a_match_without_its_own_external_id_uses_push_external_id(tmp_path):
    found = errors(variant(tmp_path, lambda c: c["push"]["match"].pop("externalId")))
    assert found == [(f"{CONTACT}/push/match",
                      "externalId '/data/contact_id' (push.externalId, as the match has "
                      "none): what GET /contacts/search answers (200) cannot hold "
                      "/0/data/contact_id: its response schema has no 'data' at /0")]


def test_the_line_is_where_the_pointer_is_written(tmp_path):
    path = variant(tmp_path, set_key("push", "externalId", value="/id"))
    _, problems = check_connector(path)
    (problem,) = [p for p in problems if p.severity == "error"]
    assert path.read_text().splitlines()[problem.line - 1].strip() == "externalId: /id"


def test_an_answer_without_a_documented_schema_is_not_checked(tmp_path):
    spec = yaml.safe_load(ANSWERS.read_text())
    del spec["paths"]["/contacts"]["post"]["responses"]["2XX"]["content"]
    spec["x-synchronization"]["objects"]["Contact"]["push"]["externalId"] = "/any/where"
    path = tmp_path / "answers.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    document, problems = check_connector(path)
    assert document is not None, [p.format() for p in problems]


@pytest.mark.parametrize(("schema", "pointer", "holds"), [
    ({"type": "object", "properties": {"a": {"type": "string"}}}, "/a", True),
    ({"type": "object", "properties": {"a": {"type": "string"}}}, "/a/b", False),
    ({"type": "object", "properties": {"a": {"type": "string"}}}, "/b", False),
    ({"type": "object", "additionalProperties": True, "properties": {}}, "/b/c", True),
    ({"type": "object", "additionalProperties": {"type": "object", "properties": {
        "id": {}}}}, "/x/id", True),
    ({"type": "object"}, "/anything", True),
    ({"type": "array", "items": {"type": "object", "properties": {"id": {}}}}, "/3/id", True),
    ({"type": "array", "items": {"type": "string"}}, "/id", False),
    ({"prefixItems": [{"type": "object", "properties": {"id": {}}}]}, "/0/id", True),
    ({"anyOf": [{"type": "object", "properties": {"x": {}}}, {"type": "null"}]}, "/x", True),
    ({"type": "object", "nullable": True, "properties": {"x": {}}}, "/x", True),
    ({"allOf": [{"type": "object", "properties": {"a": {}}},
                {"type": "object", "properties": {"b": {}}}]}, "/b", True),
    ({"$ref": "#/nowhere"}, "/any", True),
])
def test_may_hold(schema, pointer, holds):
    assert may_hold({}, schema, pointer.split("/")[1:]) is holds
