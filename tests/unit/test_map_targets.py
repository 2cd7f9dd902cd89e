"""Map targets that address array elements (``data[0].Account_Name``): parsed, checked
for one shape per path, built into arrays on both transform paths, checked field by
field against request and canonical schemas through ``items`` — with the pointer of the
map key — and carried through ``extends``.

Pure code, plus connector loading: tests/data/vendor/wrapped.yaml is a Zoho-like CRM
whose create and update bodies are ``{"data": [{…}], "trigger": […]}``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonata
import pytest
import yaml

from shared.connector import check_connector, load_connector
from shared.connector.openapi import schema_has_path
from shared.connector.payloads import entity_violations
from shared.connector.preview import preview_pull, preview_push
from shared.settings import get_settings
from shared.transform import (
    TargetError,
    TransformContext,
    build_transform,
    parse_target,
    shape_problems,
    target_name,
)

ROOT = Path(__file__).resolve().parents[2]
WRAPPED = ROOT / "tests" / "data" / "vendor" / "wrapped.yaml"
ACCOUNT = json.loads((ROOT / "tests" / "data" / "entities" / "account.json").read_text())
SYNC = "/x-synchronization"
MAP = f"{SYNC}/transforms/AccountToAccounts/map"


# -- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "target"), [
    ("name", ("name",)),
    ("billing.city", ("billing", "city")),
    ("data[0].Account_Name", ("data", 0, "Account_Name")),
    ("Contacts[0].Addresses[1].City", ("Contacts", 0, "Addresses", 1, "City")),
    ("tags[0]", ("tags", 0)),
    ("matrix[2][10]", ("matrix", 2, 10)),
    ("$meta.@type", ("$meta", "@type")),
])
def test_a_target_parses_into_names_and_indices_and_reads_back_as_written(text, target):
    assert parse_target(text) == target
    assert target_name(target) == text


@pytest.mark.parametrize(("text", "sentence"), [
    ("a[", "unclosed '[' at character 2"),
    ("a[-1]", "index [-1] at character 3 is not a whole number from 0 (write [0], [1]…)"),
    ("a[x]", "index [x] at character 3 is not a whole number from 0 (write [0], [1]…)"),
    ("a[]", "index [] at character 3 is not a whole number from 0 (write [0], [1]…)"),
    ("a[٣]", "index [٣] at character 3 is not a whole number from 0 (write [0], [1]…)"),
    ("a[01]", "index [01] at character 3: write it without leading zeros ([1])"),
    ("[0]", "an index at character 1 follows no field name (the body is an object: "
            "start with a field, e.g. data[0].name)"),
    ("a.[0]", "an index at character 3 follows no field name (the body is an object: "
              "start with a field, e.g. data[0].name)"),
    ("a[0]b", "unexpected 'b' at character 5 (an index follows a field name: name[0])"),
    ("a]", "unexpected ']' at character 2 (an index follows a field name: name[0])"),
    ("a..b", "a field name is missing before '.' at character 3"),
    ("a.", "a field name is missing at character 3"),
    ("", "empty target"),
])
def test_a_malformed_target_says_where_it_goes_wrong(text, sentence):
    with pytest.raises(TargetError) as caught:
        parse_target(text)
    assert str(caught.value) == sentence


def shapes(*texts: str) -> list[tuple[str, str]]:
    targets = [parse_target(t) for t in texts]
    return [(texts[number], sentence) for number, sentence in shape_problems(targets)]


def test_a_coherent_map_has_no_shape_problem():
    assert shapes("data[0].a", "data[0].b.c", "data[1].a", "data[0].tags[0]",
                  "data[0].tags[1]", "trigger[0]", "billing", "billing.city",
                  "data[1]", "data[1].extra") == []


def test_shape_problems_name_the_path_and_the_target_that_contradicts_it():
    assert shapes("data[0].a", "data.b", "data.c") == [
        ("data.b", "data is an object here but an array in 'data[0].a'")]  # once per path
    assert shapes("tags", "tags[0]") == [
        ("tags", "tags is set whole here and element by element in 'tags[0]': choose one")]
    assert shapes("data[0].a", "data[2].a") == [
        ("data[2].a", "data[1] is not mapped: the elements of an array are numbered from 0 "
                      "without a gap")]
    assert shapes("x[0].lines[1].sku", "x[1].lines[0].sku") == [
        ("x[0].lines[1].sku", "x[0].lines[0] is not mapped: the elements of an array are "
                              "numbered from 0 without a gap")]


def test_build_transform_refuses_a_malformed_or_contradictory_target():
    with pytest.raises(TargetError, match=r"^unclosed '\['"):
        build_transform("T", {"map": {"a[": "x"}})
    with pytest.raises(TargetError, match=r"^target 'data\[1\]\.a': data\[0\] is not mapped"):
        build_transform("T", {"map": {"data[1].a": "x"}})


# -- building, on both transform paths ----------------------------------------------------


@pytest.fixture(params=["fast", "jsonata"])
def paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Transforms built under ``TRANSFORM_PATHS`` = fast (paths walked in Python) and
    jsonata (everything through jsonata-python), as CI runs both."""
    monkeypatch.setenv("TRANSFORM_PATHS", request.param)
    get_settings.cache_clear()
    yield request.param
    get_settings.cache_clear()


def apply(spec: dict[str, Any], record: Any) -> dict[str, Any]:
    return build_transform("T", spec).apply(record, TransformContext())


def test_indices_build_arrays_on_either_path(paths, monkeypatch):
    transform = build_transform("T", {"map": {
        "data[0].Account_Name": "name",
        "data[0].Billing.City": "addresses[isBilling][0].city",
        "data[0].Tag[0].name": "tags[0]",
        "data[0].Tag[1].name": "tags[1]",
        "data[1].Account_Name": "$uppercase(code)",
        "trigger[0]": "'workflow'",
        "matrix[0][0]": 1,
    }})
    evaluated: list[str] = []
    real = jsonata.Jsonata.evaluate
    monkeypatch.setattr(jsonata.Jsonata, "evaluate",
                        lambda self, *a: evaluated.append("jsonata") or real(self, *a))

    body = transform.apply(ACCOUNT, TransformContext())

    assert body == {
        "data": [
            {"Account_Name": "Northwind Logistics", "Billing": {"City": "Paris"},
             "Tag": [{"name": "key-account"}, {"name": "logistics"}]},
            {"Account_Name": "C-000412"},
        ],
        "trigger": ["workflow"],
        "matrix": [[1]],
    }
    assert json.loads(json.dumps(body)) == body, "plain lists and dicts, nothing of ours"
    # both paths were taken: with jsonata, its interpreter evaluated every expression
    # (the constant is none); the fast path kept at least the paths to itself
    if paths == "jsonata":
        assert len(evaluated) == 6
    else:
        assert len(evaluated) <= 2


def test_an_element_with_no_field_is_left_out_and_the_array_closes_up(paths):
    spec = {"map": {"phones[0].number": "mobile", "phones[1].number": "landline",
                    "phones[2].number": "fax", "tags[0]": "first", "tags[1]": "second"}}

    assert apply(spec, {"landline": "01", "second": "b"}) == {
        "phones": [{"number": "01"}], "tags": ["b"]}
    assert apply(spec, {"mobile": "06", "fax": "03"}) == {
        "phones": [{"number": "06"}, {"number": "03"}]}
    assert apply(spec, {}) == {}, "an array with no element is left out, as an empty object is"


def test_with_keep_nulls_every_element_is_kept_and_holds_its_nulls(paths):
    spec = {"map": {"data[0].a": "a", "data[1].b": "b"}, "keepNulls": True}

    assert apply(spec, {"b": 2}) == {"data": [{"a": None}, {"b": 2}]}


def test_an_element_copied_whole_is_extended_without_touching_the_record(paths):
    spec = {"map": {"data[0]": "address", "data[0].country": "'FR'"}}
    record = {"address": {"city": "Lyon", "lines": ["1 rue X"]}}
    before = copy.deepcopy(record)

    assert apply(spec, record) == {"data": [{"city": "Lyon", "lines": ["1 rue X"],
                                             "country": "FR"}]}
    assert record == before


def test_an_array_an_expression_yields_is_kept_as_it_is(paths):
    spec = {"map": {"data[0].lines": "lines", "data[0].n": "n"}}
    record = {"lines": [{"sku": "A"}, {"sku": "B"}], "n": 2}

    assert apply(spec, record) == {"data": [{"lines": [{"sku": "A"}, {"sku": "B"}], "n": 2}]}


def test_a_map_without_indices_is_built_as_before(paths):
    transform = build_transform("T", {"map": {"billing.city": "city", "name": "name"}})

    assert not transform.indexed
    assert transform.apply({"city": "Lyon", "name": "A"}, TransformContext()) == {
        "billing": {"city": "Lyon"}, "name": "A"}


# -- against the schemas -------------------------------------------------------------------


def test_schema_has_path_walks_items_prefix_items_and_declared_types():
    doc = {"components": {"schemas": {"Line": {"type": "object", "properties": {
        "sku": {"type": "string"}}, "additionalProperties": False}}}}
    schema = {"type": "object", "properties": {
        "lines": {"type": "array", "items": {"$ref": "#/components/schemas/Line"}},
        "pair": {"type": "array", "prefixItems": [{"type": "string"},
                                                  {"type": "object", "properties": {
                                                      "x": {"type": "integer"}},
                                                   "additionalProperties": False}],
                 "items": False},
        "anything": {"type": "array"},
        "note": {"type": "string"},
        "meta": {"type": "object"},
    }, "additionalProperties": False}

    def holds(text: str) -> bool:
        return schema_has_path(doc, schema, parse_target(text))

    assert holds("lines[0].sku") and holds("lines[7].sku")
    assert not holds("lines[0].skew")
    assert not holds("lines.sku"), "an array holds no field"
    assert holds("pair[0]") and holds("pair[1].x")
    assert not holds("pair[1].y") and not holds("pair[2]"), "items: false after the prefix"
    assert holds("anything[0].whatever")
    assert not holds("note[0]") and not holds("note.x"), "a string is no container"
    assert not holds("meta[0]") and holds("meta.x")


@pytest.fixture(scope="module")
def wrapped() -> dict[str, Any]:
    return yaml.safe_load(WRAPPED.read_text())


def write(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / "wrapped.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return path


def errors(path: Path) -> set[tuple[str, str]]:
    document, problems = check_connector(path)
    assert document is None, "an invalid connector must not load"
    return {(p.pointer, p.message) for p in problems if p.severity == "error"}


def test_the_wrapped_connector_loads(wrapped):
    document, problems = check_connector(WRAPPED)
    assert document is not None, [p.format() for p in problems]
    assert problems == []


def test_an_unknown_field_inside_an_element_is_located_at_its_map_key(tmp_path, wrapped):
    spec = copy.deepcopy(wrapped)
    fields = spec["x-synchronization"]["transforms"]["AccountToAccounts"]["map"]
    fields["data[0].Acount_Name"] = fields.pop("data[0].Account_Name")  # the typo
    fields["data[0].Tag[0].label"] = "'x'"  # Tag's items allow only name
    fields["trigger[0].kind"] = "'x'"  # trigger's items are strings

    both = "the request schema of POST /Accounts nor in the request schema of PUT /Accounts/{id}"
    assert errors(write(tmp_path, spec)) == {
        (f"{MAP}/data[0].Acount_Name", f"target field 'data[0].Acount_Name' is not in {both}"),
        (f"{MAP}/data[0].Tag[0].label", f"target field 'data[0].Tag[0].label' is not in {both}"),
        (f"{MAP}/trigger[0].kind", f"target field 'trigger[0].kind' is not in {both}"),
    }


def test_a_field_put_in_the_array_itself_is_refused_with_the_indexed_target_to_write(
        tmp_path, wrapped):
    """What a map did before indices: the array's fields written as an object's."""
    spec = copy.deepcopy(wrapped)
    fields = spec["x-synchronization"]["transforms"]["AccountToAccounts"]["map"]
    spec["x-synchronization"]["transforms"]["AccountChangeToAccounts"]["map"] = {
        "data[0].Description": "description"}
    fields.clear()
    fields.update({"data.Account_Name": "name", "data.Account_Number": "code",
                   "data.Billing_Address[0].City": "'Paris'"})

    both = "the request schema of POST /Accounts nor in the request schema of PUT /Accounts/{id}"
    found = errors(write(tmp_path, spec))
    assert (f"{MAP}/data.Account_Name", f"target field 'data.Account_Name' is not in {both}; "
            "data is an array there: did you mean 'data[0].Account_Name'?") in found
    assert (f"{MAP}/data.Billing_Address[0].City", "target field 'data.Billing_Address[0].City' "
            f"is not in {both}") in found  # Billing_Address is an object: no hint fits


def test_malformed_and_contradictory_targets_are_each_one_located_error(tmp_path, wrapped):
    spec = copy.deepcopy(wrapped)
    fields = spec["x-synchronization"]["transforms"]["AccountToAccounts"]["map"]
    fields.update({"a[": "'x'", "a[-1]": "'x'", "[0]": "'x'", "data[0].Tag[3].name": "'x'"})
    child = spec["x-synchronization"]["transforms"]["AccountChangeToAccounts"]["map"]
    child["trigger"] = "['approval']"  # the parent fills trigger[0]

    found = errors(write(tmp_path, spec))
    assert found == {
        (f"{MAP}/a[", "target 'a[': unclosed '[' at character 2"),
        (f"{MAP}/a[-1]", "target 'a[-1]': index [-1] at character 3 is not a whole number "
                         "from 0 (write [0], [1]…)"),
        (f"{MAP}/[0]", "target '[0]': an index at character 1 follows no field name (the body "
                       "is an object: start with a field, e.g. data[0].name)"),
        (f"{MAP}/data[0].Tag[3].name", "target 'data[0].Tag[3].name': data[0].Tag[2] is not "
                                       "mapped: the elements of an array are numbered from 0 "
                                       "without a gap"),
        (f"{SYNC}/transforms/AccountChangeToAccounts/map/trigger",
         "target 'trigger': trigger is set whole here and element by element in "
         "'trigger[0]': choose one"),
    }, "the meta-schema's finding and the compiler's are one sentence, said once"


def test_extends_fills_the_same_element_and_may_add_the_next(tmp_path, wrapped):
    document = load_connector(WRAPPED)
    change = document.transforms["AccountChangeToAccounts"].apply(ACCOUNT, TransformContext())
    assert change["trigger"] == ["approval"], "the child's own field wins"
    assert change["data"] == [{
        "Account_Name": "Northwind Logistics", "Account_Number": "C-000412",
        "Website": "www.northwind-logistics.fr", "Phone": "+33 1 84 88 12 00",
        "Employees": 420, "Billing_Address": {"City": "Paris", "Country": "FR"},
        "Tag": [{"name": "key-account"}, {"name": "logistics"}],
        "Description": "Key account since 2019; 3 depots in Ile-de-France."}]

    spec = copy.deepcopy(wrapped)
    child = spec["x-synchronization"]["transforms"]["AccountChangeToAccounts"]["map"]
    child["data[0].Tag[2].name"] = "'synced'"  # after the parent's [0] and [1]: no gap
    document = load_connector(write(tmp_path, spec))
    change = document.transforms["AccountChangeToAccounts"].apply(ACCOUNT, TransformContext())
    assert change["data"][0]["Tag"] == [{"name": "key-account"}, {"name": "logistics"},
                                        {"name": "synced"}]

    child["data[0].Tag[4].name"] = "'gap'"
    assert errors(write(tmp_path, spec)) == {(
        f"{SYNC}/transforms/AccountChangeToAccounts/map/data[0].Tag[4].name",
        "target 'data[0].Tag[4].name': data[0].Tag[3] is not mapped: the elements of an "
        "array are numbered from 0 without a gap")}


def test_preview_shows_the_wrapped_body_and_checks_it_through_the_array():
    document = load_connector(WRAPPED)
    obj = document.objects["Account"]

    preview = preview_push(document, obj, ACCOUNT, "create")
    assert preview.errors == []
    assert preview.requests[0].body["data"][0]["Account_Name"] == "Northwind Logistics"
    assert '"data": [\n    {\n      "Account_Name": "Northwind Logistics"' in preview.render()

    nameless = preview_push(document, obj, {**ACCOUNT, "code": None, "name": "N" * 121},
                            "create")
    assert nameless.errors == [
        "push create: Account (account): body breaks the request schema of POST /Accounts "
        "at /data/0: 'Account_Number' is a required property",
        "push create: Account (account): body breaks the request schema of POST /Accounts "
        f"at /data/0/Account_Name: '{'N' * 121}' is too long",
    ]


def test_a_pull_map_fills_the_canonical_records_array(wrapped, tmp_path):
    document = load_connector(WRAPPED)
    obj = document.objects["Account"]
    stored = {"id": "4876876000000333001", "Account_Name": "Northwind Logistics",
              "Account_Number": "C-000412", "Billing_Address": {"City": "Paris"},
              "Tag": [{"name": "key-account"}]}

    preview = preview_pull(document, obj, stored)

    assert preview.errors == []
    assert preview.record == {
        "name": "Northwind Logistics", "code": "C-000412",
        "addresses": [{"type": "billing", "isBilling": True, "city": "Paris"}],
        "tags": ["key-account"]}
    assert entity_violations("account", preview.record) == []

    spec = copy.deepcopy(wrapped)
    fields = spec["x-synchronization"]["transforms"]["AccountsToAccount"]["map"]
    fields["addresses[0].cty"] = fields.pop("addresses[0].city")
    assert errors(write(tmp_path, spec)) == {(
        f"{SYNC}/transforms/AccountsToAccount/map/addresses[0].cty",
        "target field 'addresses[0].cty' is not in the canonical account schema")}


def test_a_literal_of_a_type_its_field_refuses_is_located_at_its_map_key(tmp_path, wrapped):
    """Constants and literal expressions are typed at load; other expressions are left
    to the request schema check at push (and in preview)."""
    spec = copy.deepcopy(wrapped)
    fields = spec["x-synchronization"]["transforms"]["AccountToAccounts"]["map"]
    fields.update({"data[0].Employees": "'many'", "data[0].Phone": 5, "trigger[0]": True,
                   "data[0].Website": "$string(numberOfEmployees)",
                   "data[0].Description": None})
    pull = spec["x-synchronization"]["transforms"]["AccountsToAccount"]["map"]
    pull["addresses[0].isBilling"] = "'yes'"

    both = "the request schema of POST /Accounts and the request schema of PUT /Accounts/{id}"
    assert errors(write(tmp_path, spec)) == {
        (f"{MAP}/data[0].Employees",
         f"target field 'data[0].Employees' is given \"many\", a string, where {both} want "
         "an integer"),
        (f"{MAP}/data[0].Phone",
         f"target field 'data[0].Phone' is given 5, an integer, where {both} want a string"),
        # the update's transform gives trigger[0] its own value: only the create's is wrong
        (f"{MAP}/trigger[0]", "target field 'trigger[0]' is given true, a boolean, where the "
                              "request schema of POST /Accounts wants a string"),
        (f"{SYNC}/transforms/AccountsToAccount/map/addresses[0].isBilling",
         "target field 'addresses[0].isBilling' is given \"yes\", a string, where the "
         "canonical account schema wants a boolean or null"),
    }


def test_a_form_body_warns_at_each_element_field_a_form_cannot_carry(tmp_path):
    """tests/data/vendor/billing.yaml's update declares no deepObject for its charges:
    filled element by element, each field is told what the whole list was."""
    spec = yaml.safe_load((ROOT / "tests" / "data" / "vendor" / "billing.yaml").read_text())
    fields = spec["x-synchronization"]["transforms"]["AccountToCustomer"]["map"]
    del fields["charges"]
    fields.update({"charges[0].amount": "creditLimit", "charges[0].currency": "currency"})

    document, problems = check_connector(write(tmp_path, spec))

    assert document is not None
    at = f"{SYNC}/transforms/AccountToCustomer/map"
    assert [(p.severity, p.pointer, p.message) for p in problems] == [
        ("warning", f"{at}/charges[0].{name}",
         "POST /customers/{id} sends its body as application/x-www-form-urlencoded, where a "
         "list of objects has no encoding in style 'form': declare style deepObject for "
         "'charges' in the operation's encoding (an overlay can), or the record fails when "
         "sent") for name in ("amount", "currency")]
    body = document.transforms["AccountToCustomer"].apply(ACCOUNT, TransformContext())
    assert body["charges"] == [{"amount": 50000, "currency": "EUR"}]
