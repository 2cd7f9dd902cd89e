"""Actions made of several requests (``steps``, tests/data/vendor/customers.yaml): what
compiles, every mistake located where it is written, and the preview showing each
step's request with placeholders for what earlier steps answer."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.connector import check_connector, load_connector
from shared.connector.preview import format_request, preview_push
from shared.connector.reach import reached
from tests.unit.pusher.conftest import sample

ROOT = Path(__file__).resolve().parents[2]
CUSTOMERS = ROOT / "tests" / "data" / "vendor" / "customers.yaml"
PUSH = "/x-synchronization/objects/company/push"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return yaml.safe_load(CUSTOMERS.read_text())


def push_of(document: dict[str, Any]) -> dict[str, Any]:
    return document["x-synchronization"]["objects"]["company"]["push"]


def problems_of(tmp_path: Path, document: dict[str, Any]) -> list[tuple[str, str, str]]:
    path = tmp_path / "customers.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    _, problems = check_connector(path)
    return [(p.severity, p.pointer, p.message) for p in problems]


def errors_at(problems: list[tuple[str, str, str]], pointer: str) -> list[str]:
    return [message for severity, at, message in problems
            if severity == "error" and at == pointer]


def test_the_spec_compiles_each_action_into_its_steps() -> None:
    document = load_connector(CUSTOMERS)
    push = document.objects["company"].push

    create, update, delete = push["create"], push["update"], push["delete"]
    assert [s.name for s in create.steps] == ["customer", "address"]
    assert [s.operation.key for s in create.steps] == [
        "POST /customers", "POST /customers/{id}/addresses"]
    assert create.id_step is create.steps[0] and create.id_step.option("externalId") == "/id"
    assert create.operation.key == "POST /customers"  # the action stands for its id step
    assert [s.name for s in update.steps] == ["current", "customer", "address", "newAddress"]
    assert update.id_step is None and update.main_step is update.steps[1]
    assert update.steps[0].option("capture") == {"etag": "header:ETag",
                                                 "addressId": "body:/billingAddressId"}
    assert [s.name for s in delete.steps] == ["customer"]
    assert create.steps[1].pointer == f"{PUSH}/create/steps/1"


@pytest.mark.parametrize(("where", "value", "pointer", "words"), [
    # a reference to a later step
    (("update", 1, "params", "If-Match"), "{steps.address.etag}",
     "update/steps/1/params/If-Match",
     "{steps.address.etag}: step 'address' is not before this one — a step sees the "
     "captures of the steps before it (current)"),
    # to itself
    (("update", 0, "params", "id"), "{steps.current.etag}", "update/steps/0/params/id",
     "step 'current' is not before this one"),
    # to an unknown step, with the nearest name
    (("update", 2, "params", "addressId"), "{steps.curent.addressId}",
     "update/steps/2/params/addressId",
     "{steps.curent.addressId}: there is no step 'curent' (did you mean 'current'?); the "
     "steps before this one: current, customer"),
    # to a capture the step does not make
    (("update", 1, "params", "If-Match"), "{steps.current.eTag}",
     "update/steps/1/params/If-Match",
     "{steps.current.eTag}: step 'current' captures no 'eTag' (its captures: etag, "
     "addressId)"),
    # inside a larger expression
    (("update", 1, "params", "If-Match"), "W/{$string(steps.nope.etag)}",
     "update/steps/1/params/If-Match", "there is no step 'nope'"),
    # in a when
    (("update", 2, "when"), "$exists(steps.newAddress.id)", "update/steps/2/when",
     "step 'newAddress' is not before this one"),
    # the external id before the create's id step has answered
    (("create", 0, "headers", "X-Ref"), "{externalId}", "create/steps/0/headers/X-Ref",
     "{externalId} is not available here (a create step template can use record, steps)"),
])
def test_a_bad_reference_is_an_error_where_it_is_written(
        tmp_path, spec, where, value, pointer, words) -> None:
    document = copy.deepcopy(spec)
    action, index, *keys = where
    node = push_of(document)[action]["steps"][index]
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value

    problems = problems_of(tmp_path, document)

    assert any(words in message for message in errors_at(problems, f"{PUSH}/{pointer}")), \
        problems


def test_the_external_id_after_the_id_step_and_earlier_captures_are_fine(
        tmp_path, spec) -> None:
    document = copy.deepcopy(spec)
    steps = push_of(document)["create"]["steps"]
    steps[0]["capture"] = {"ref": "body:/reference"}
    steps[1]["headers"] = {"X-Customer": "{externalId}", "X-Ref": "{steps.customer.ref}"}

    problems = problems_of(tmp_path, document)

    assert [p for p in problems if p[0] == "error"] == []


def test_a_create_names_exactly_one_id_step(tmp_path, spec) -> None:
    none = copy.deepcopy(spec)
    del push_of(none)["create"]["steps"][0]["externalId"]
    two = copy.deepcopy(spec)
    push_of(two)["create"]["steps"][1]["externalId"] = "/id"

    assert errors_at(problems_of(tmp_path, none), f"{PUSH}/create/steps") == [
        "a create's steps must say which answer holds the created record's id: give "
        "exactly one step 'externalId' (a JSON pointer into its answer, such as /id)"]
    assert errors_at(problems_of(tmp_path, two), f"{PUSH}/create/steps/1/externalId") == [
        "step 1 says externalId too: exactly one step of a create answers the record's id "
        "(step 0 does)"]


def test_update_and_delete_steps_answer_no_id_and_a_delete_step_takes_no_body(
        tmp_path, spec) -> None:
    document = copy.deepcopy(spec)
    push_of(document)["update"]["steps"][1]["externalId"] = "/id"
    push_of(document)["delete"]["steps"][0]["body"] = "AccountToCustomer"

    problems = problems_of(tmp_path, document)

    assert errors_at(problems, f"{PUSH}/update/steps/1/externalId") == [
        "only a create's step answers the record's id: the update already has it as "
        "{externalId}"]
    assert any("a delete has no record to make a body from" in m
               for m in errors_at(problems, f"{PUSH}/delete/steps/0/body"))


def test_step_names_are_unique_and_every_step_is_checked_like_a_call(tmp_path, spec) -> None:
    document = copy.deepcopy(spec)
    steps = push_of(document)["update"]["steps"]
    steps[3]["name"] = "address"
    steps[2]["params"]["nope"] = "x"
    steps[1]["operation"] = "replaceCustomr"

    problems = problems_of(tmp_path, document)

    assert errors_at(problems, f"{PUSH}/update/steps/3/name") == [
        "step name 'address' is used twice: each step needs its own"]
    assert any("has no parameter 'nope'" in m
               for m in errors_at(problems, f"{PUSH}/update/steps/2/params/nope"))
    assert any("did you mean 'replaceCustomer'?" in m
               for m in errors_at(problems, f"{PUSH}/update/steps/1/operation"))


def test_a_step_body_is_checked_against_its_own_operations_request_schema(
        tmp_path, spec) -> None:
    document = copy.deepcopy(spec)
    document["x-synchronization"]["transforms"]["AccountToCustomer"]["map"]["street"] = \
        "addresses[0].line1"

    problems = problems_of(tmp_path, document)

    assert errors_at(problems,
                     "/x-synchronization/transforms/AccountToCustomer/map/street") == [
        "target field 'street' is not in the request schema of POST /customers nor in "
        "the request schema of PUT /customers/{id}"]


def test_the_meta_schema_refuses_steps_beside_an_operation_and_a_step_without_name(
        tmp_path, spec) -> None:
    document = copy.deepcopy(spec)
    push_of(document)["create"]["operation"] = "createCustomer"
    del push_of(document)["update"]["steps"][0]["name"]

    problems = problems_of(tmp_path, document)

    assert any(m.startswith("unknown key 'operation'")
               for m in errors_at(problems, f"{PUSH}/create/operation"))
    assert errors_at(problems, f"{PUSH}/update/steps/0") == [
        "the required property 'name' is missing"]


def test_a_write_before_the_id_step_is_a_warning(tmp_path, spec) -> None:
    document = copy.deepcopy(spec)
    steps = push_of(document)["create"]["steps"]
    steps.insert(0, {"name": "draft", "operation": "createCustomer",
                     "body": "AccountToCustomer"})

    problems = problems_of(tmp_path, document)

    assert ("warning", f"{PUSH}/create/steps/0",
            "step 'draft' (POST /customers) comes before the step that answers the "
            "record's id: nothing is recorded of it, so a retry sends it again; make it "
            "a read, or put it after the id step") in problems


# -- preview ---------------------------------------------------------------------------


def test_the_preview_shows_every_step_with_placeholders_for_earlier_answers() -> None:
    document = load_connector(CUSTOMERS)
    record = sample("account", parentAccountId=None)

    preview = preview_push(document, document.objects["company"], record, "update",
                           external_id="cu-7")

    assert preview.errors == []
    titles = [title for title, _ in preview.sections]
    assert titles == [
        "push update: company (account), step 1 of 4: current",
        "push update: company (account), step 2 of 4: customer",
        "push update: company (account), step 3 of 4: address (only when "
        "record.addresses[isBilling] and steps.current.addressId)",
        "push update: company (account), step 4 of 4: newAddress (only when "
        "record.addresses[isBilling] and $not($exists(steps.current.addressId)))"]
    read, customer, address, _ = preview.requests
    assert (read.method, read.url) == ("GET", "https://billing.example/api/customers/cu-7")
    assert customer.headers["If-Match"] == "<etag: header:ETag of step current>"
    assert customer.body == {"name": "Northwind Logistics",
                             "email": "accounts@northwind-logistics.fr",
                             "reference": "C-000412"}
    assert address.url == ("https://billing.example/api/customers/cu-7/addresses/"
                           "%3CaddressId%3A%20body%3A%2FbillingAddressId%20of%20step%20"
                           "current%3E")
    assert address.body["country"] == "FR"


def test_a_step_whose_when_reads_only_the_record_is_left_out_when_false() -> None:
    document = load_connector(CUSTOMERS)
    record = sample("account", parentAccountId=None, addresses=[])

    preview = preview_push(document, document.objects["company"], record, "create")

    assert preview.errors == []
    assert [r.url for r in preview.requests] == ["https://billing.example/api/customers"]
    assert ("push create: company (account): step 2 of 2 (address) is skipped: its when "
            "is not true for this record") in preview.notes


def test_the_create_preview_shows_the_id_as_a_placeholder_after_the_id_step() -> None:
    document = load_connector(CUSTOMERS)
    record = sample("account", parentAccountId=None)

    preview = preview_push(document, document.objects["company"], record, "create")

    assert preview.errors == []
    customer, address = preview.requests
    assert (customer.method, customer.url) == ("POST", "https://billing.example/api/customers")
    assert address.url == ("https://billing.example/api/customers/"
                           "%3Cthe%20id%20at%20%2Fid%20of%20step%20customer%3E/addresses")
    assert any("body valid against the request schema of POST /customers/{id}/addresses" in n
               for n in preview.notes)


def test_the_operations_only_steps_name_are_reached() -> None:
    document = load_connector(CUSTOMERS)

    reach = reached(document.document, document.objects)

    for path, method in (("/customers~1{id}~1addresses~1{addressId}", "put"),
                         ("/customers~1{id}~1addresses", "post"),
                         ("/customers~1{id}", "get")):
        assert reach.covers(f"/paths/~1{path[1:]}/{method}"), path
    assert reach.covers("/components/schemas/Address")


def test_the_printed_request_shows_a_placeholder_in_the_path_as_written() -> None:
    document = load_connector(CUSTOMERS)
    preview = preview_push(document, document.objects["company"],
                           sample("account", parentAccountId=None), "create")

    printed = format_request(preview.requests[1])

    assert printed.splitlines()[0] == ("POST https://billing.example/api/customers/"
                                       "<the id at /id of step customer>/addresses")


# -- a step's body reading the answers of the steps before it ($steps) --------------------

ADDRESSES = ROOT / "tests" / "data" / "vendor" / "addresses.yaml"


def addresses_spec() -> dict[str, Any]:
    return yaml.safe_load(ADDRESSES.read_text())


def test_a_body_reading_earlier_answers_compiles_and_previews_them_as_placeholders() -> None:
    document = load_connector(ADDRESSES)
    create = document.objects["company"].push["create"]
    assert [s.reads_answers for s in create.steps] == [False, True]

    preview = preview_push(document, document.objects["company"],
                           sample("account", parentAccountId=None), "create")

    assert preview.errors == []
    assert preview.requests[1].body["customerId"] == "<id: body:/id of step customer>"


@pytest.mark.parametrize(("reference", "words"), [
    ("$steps.custmer.id", "$steps.custmer.id: there is no step 'custmer' (did you mean "
                          "'customer'?); the steps before this one: customer"),
    ("$steps.customer.number", "$steps.customer.number: step 'customer' captures no "
                               "'number' (its captures: id)"),
    ("$steps.address.id", "$steps.address.id: step 'address' is not before this one"),
])
def test_a_body_reading_a_step_that_cannot_answer_is_a_located_error(
        tmp_path: Path, reference: str, words: str) -> None:
    document = addresses_spec()
    document["x-synchronization"]["transforms"]["AccountToAddress"]["map"]["customerId"] = \
        reference

    found = errors_at(problems_of(tmp_path, document), f"{PUSH}/create/steps/1/body")

    assert len(found) == 1 and words in found[0], found
    assert found[0].startswith("transform AccountToAddress: ")


def test_steps_read_outside_a_step_is_an_error_where_the_body_is_given(tmp_path: Path) -> None:
    document = addresses_spec()
    push_of(document)["create"] = {"operation": "createAddress", "body": "AccountToAddress",
                                   "externalId": "/id"}

    found = errors_at(problems_of(tmp_path, document), f"{PUSH}/create/body")

    assert found == ["transform AccountToAddress reads $steps, which only the body of a push "
                     "action's step has (the captures of the steps before it); here it is "
                     "always empty"]
