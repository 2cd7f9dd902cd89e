"""Every kind of connector problem is reported with its pointer, line and a plain sentence."""

from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path

import pytest
import yaml

from shared.connector import DocumentInvalid, check_connector, load_connector
from shared.connector.openapi import deref

ROOT = Path(__file__).resolve().parents[2]
ACME = ROOT / "connectors" / "acme-crm.json"
LEDGER = ROOT / "tests" / "data" / "vendor" / "ledger.yaml"
SYNC = "/x-synchronization"


@pytest.fixture(scope="module")
def acme() -> dict:
    return json.loads(ACME.read_text())


def write(tmp_path: Path, document: dict, name: str = "connector.json") -> Path:
    path = tmp_path / name
    if name.endswith((".yaml", ".yml")):
        path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    else:
        path.write_text(json.dumps(document, indent=2))
    return path


def errors_of(path: Path, overlay: Path | None = None) -> list:
    document, problems = check_connector(path, overlay)
    errors = [p for p in problems if p.severity == "error"]
    assert document is None, "an invalid connector must not load"
    assert errors
    return errors


def find(errors: list, pointer: str, words: str):
    for problem in errors:
        if problem.pointer == pointer and words in problem.message:
            return problem
    listing = "\n".join(p.format() for p in errors)
    raise AssertionError(f"no problem at {pointer} saying {words!r}; got:\n{listing}")


def line_of(path: Path, needle: str, after: str | None = None) -> int:
    lines = path.read_text().splitlines()
    start = 0
    if after is not None:
        start = next(i for i, line in enumerate(lines) if after in line)
    return next(i + 1 for i, line in enumerate(lines) if i >= start and needle in line)


# -- the example connectors are valid --------------------------------------------------


def test_acme_connector_is_valid():
    document, problems = check_connector(ACME)
    assert document is not None, [p.format() for p in problems]
    assert [p for p in problems if p.severity == "error"] == []
    assert set(document.objects) == {"Account", "Contact", "Case"}
    assert document.objects["Account"].push["create"].operation.key == "POST /companies"
    # "METHOD /path" references work like operationIds
    assert document.objects["Case"].push["update"].operation.operation_id == "updateTicket"


def test_load_connector_raises_with_every_problem(tmp_path, acme):
    broken = copy.deepcopy(acme)
    broken["x-synchronization"]["objects"]["Account"]["push"]["create"]["operation"] = "nope"
    broken["x-synchronization"]["transforms"]["AccountToCompany"]["map"]["name"] = "$x("
    with pytest.raises(DocumentInvalid) as caught:
        load_connector(write(tmp_path, broken))
    pointers = {p.pointer for p in caught.value.problems}
    assert f"{SYNC}/objects/Account/push/create/operation" in pointers
    assert f"{SYNC}/transforms/AccountToCompany/map/name" in pointers


# -- files that are not connectors ------------------------------------------------------


def test_unparseable_json_reports_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "openapi": "3.1.0",\n  "info": {\n    "title": "x",,\n  }\n}\n')
    (problem,) = errors_of(path)
    assert problem.file == str(path)
    assert problem.line == 4
    assert "is not valid JSON" in problem.message


def test_unparseable_yaml_reports_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("openapi: 3.1.0\ninfo:\n  title: x\n  version: [1\npaths: {}\n")
    (problem,) = errors_of(path)
    assert "is not valid YAML" in problem.message
    assert problem.line in (4, 5)


def test_missing_file(tmp_path):
    (problem,) = errors_of(tmp_path / "nowhere.json")
    assert problem.message == "file not found"


@pytest.mark.parametrize(
    ("document", "pointer", "words"),
    [
        ({"swagger": "2.0", "info": {}, "paths": {}}, "/swagger", "is Swagger 2.0"),
        ({"openapi": "2.5", "info": {}, "paths": {}}, "/openapi", "is not OpenAPI 3.0/3.1"),
        ({"info": {"title": "x"}}, "", "is not OpenAPI 3.0/3.1"),
    ],
)
def test_not_openapi_3(tmp_path, document, pointer, words):
    find(errors_of(write(tmp_path, document)), pointer, words)


def test_top_level_array_is_not_a_connector(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    assert any(
        "not an OpenAPI document" in p.message or "not OpenAPI" in p.message
        for p in errors_of(path)
    )


def test_openapi_errors_are_located(tmp_path, acme):
    broken = copy.deepcopy(acme)
    del broken["info"]["version"]
    broken["paths"]["/companies"]["post"]["responses"] = "nope"
    path = write(tmp_path, broken)
    errors = errors_of(path)
    problem = find(errors, "/info", "'version' is a required property")
    assert problem.line == line_of(path, '"info"')
    find(errors, "/paths/~1companies/post/responses", "OpenAPI:")


def test_broken_ref_is_reported_not_a_traceback(tmp_path, acme):
    broken = copy.deepcopy(acme)
    broken["paths"]["/companies"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ] = {"$ref": "#/components/schemas/Nowhere"}
    errors = errors_of(write(tmp_path, broken))
    find(
        errors,
        "/paths/~1companies/post/requestBody/content/application~1json/schema/$ref",
        "points at nothing",
    )


def test_missing_synchronization_block(tmp_path, acme):
    plain = {k: v for k, v in acme.items() if k != "x-synchronization"}
    find(errors_of(write(tmp_path, plain)), "", "no x-synchronization block")


# -- the x-synchronization block --------------------------------------------------------


def test_meta_schema_errors_are_plain_sentences(tmp_path, acme):
    broken = copy.deepcopy(acme)
    objects = broken["x-synchronization"]["objects"]
    objects["Contact"]["push"]["create"]["bdy"] = "ContactToPerson"
    objects["Case"]["conflict"] = "whoever"
    del objects["Account"]["pull"]["body"]
    broken["x-synchronization"]["rateLimit"] = {"requests": 0, "per": "1 second"}
    path = write(tmp_path, broken)
    errors = errors_of(path)
    problem = find(errors, f"{SYNC}/objects/Contact/push/create/bdy", "unknown key 'bdy'")
    assert "did you mean 'body'?" in problem.message
    assert problem.line == line_of(path, '"bdy"')
    find(errors, f"{SYNC}/objects/Case/conflict", "'whoever' is not one of: bss-wins")
    find(errors, f"{SYNC}/objects/Account/pull", "the required property 'body' is missing")
    find(errors, f"{SYNC}/rateLimit/requests", "must be at least 1")
    find(errors, f"{SYNC}/rateLimit/per", "does not have the expected form")


def test_unknown_entity(tmp_path, acme):
    broken = copy.deepcopy(acme)
    broken["x-synchronization"]["objects"]["Account"]["entity"] = "acount"
    broken["x-synchronization"]["dependencies"]["tickets"] = ["account"]
    path = write(tmp_path, broken)
    errors = errors_of(path)
    problem = find(errors, f"{SYNC}/objects/Account/entity", "'acount' is not one of")
    assert "did you mean 'account'?" in problem.message
    assert problem.line == line_of(path, '"acount"')
    find(errors, f"{SYNC}/dependencies/tickets", "unknown key 'tickets'")


def test_unknown_operation(tmp_path, acme):
    broken = copy.deepcopy(acme)
    push = broken["x-synchronization"]["objects"]["Account"]["push"]
    push["create"]["operation"] = "createCompny"
    push["delete"]["operation"] = "DELETE /companiez/{id}"
    path = write(tmp_path, broken)
    errors = errors_of(path)
    problem = find(
        errors, f"{SYNC}/objects/Account/push/create/operation", "unknown operation 'createCompny'"
    )
    assert "did you mean 'createCompany'?" in problem.message
    assert problem.line == line_of(path, '"createCompny"')
    find(
        errors,
        f"{SYNC}/objects/Account/push/delete/operation",
        "unknown operation 'DELETE /companiez/{id}'",
    )


def test_path_parameter_never_provided(tmp_path, acme):
    broken = copy.deepcopy(acme)
    broken["x-synchronization"]["objects"]["Account"]["push"]["update"]["params"] = {}
    problem = find(
        errors_of(write(tmp_path, broken)),
        f"{SYNC}/objects/Account/push/update/params",
        "path parameter 'id' of PATCH /companies/{id} is never provided",
    )
    assert problem.message.endswith("add params.id")


def test_parameter_the_operation_does_not_have(tmp_path, acme):
    broken = copy.deepcopy(acme)
    broken["x-synchronization"]["objects"]["Account"]["push"]["update"]["params"]["ID"] = (
        "{externalId}"
    )
    find(
        errors_of(write(tmp_path, broken)),
        f"{SYNC}/objects/Account/push/update/params/ID",
        "operation PATCH /companies/{id} has no parameter 'ID' (its parameters: id)",
    )


def test_template_errors(tmp_path, acme):
    broken = copy.deepcopy(acme)
    push = broken["x-synchronization"]["objects"]["Account"]["push"]
    push["update"]["params"]["id"] = "{externalid}"
    push["delete"]["params"]["id"] = "{externalId"
    errors = errors_of(write(tmp_path, broken))
    find(
        errors,
        f"{SYNC}/objects/Account/push/update/params/id",
        "{externalid} is not available here (a update template can use record, externalId",
    )
    find(errors, f"{SYNC}/objects/Account/push/delete/params/id", "unclosed '{' at character 1")


def test_jsonata_syntax_error_with_position(tmp_path, acme):
    broken = copy.deepcopy(acme)
    broken["x-synchronization"]["transforms"]["AccountToCompany"]["map"]["website"] = (
        "$lowercase(webSite"
    )
    path = write(tmp_path, broken)
    problem = find(
        errors_of(path),
        f"{SYNC}/transforms/AccountToCompany/map/website",
        "JSONata syntax error at character 18",
    )
    assert "expected )" in problem.message
    assert problem.line == line_of(path, "$lowercase(webSite")


def test_unknown_function_and_lookup_table(tmp_path, acme):
    broken = copy.deepcopy(acme)
    fields = broken["x-synchronization"]["transforms"]["AccountToCompany"]["map"]
    fields["industry"] = "$lookup('industries', industry)"
    fields["website"] = "$lowercse(webSite)"
    fields["parentCompanyId"] = "$externalId('acount', parentAccountId)"
    errors = errors_of(write(tmp_path, broken))
    find(
        errors,
        f"{SYNC}/transforms/AccountToCompany/map/industry",
        "$lookup uses lookup table 'industries', which is not defined",
    )
    problem = find(
        errors, f"{SYNC}/transforms/AccountToCompany/map/website", "unknown function $lowercse"
    )
    assert "did you mean $lowercase?" in problem.message
    find(
        errors,
        f"{SYNC}/transforms/AccountToCompany/map/parentCompanyId",
        "'acount' is not an entity",
    )


def test_functions_an_expression_defines_itself_are_known(tmp_path, acme):
    fixed = copy.deepcopy(acme)
    fixed["x-synchronization"]["transforms"]["AccountToCompany"]["map"]["name"] = (
        "($up := function($s) { $uppercase($s) }; $up(name))"
    )
    document, problems = check_connector(write(tmp_path, fixed))
    assert document is not None, [p.format() for p in problems]


def test_target_field_missing_from_request_schema(tmp_path, acme):
    broken = copy.deepcopy(acme)
    broken["x-synchronization"]["transforms"]["AccountToCompany"]["map"]["websiteUrl"] = "webSite"
    broken["x-synchronization"]["transforms"]["AccountToCompany"]["map"]["billingAddress.zip"] = (
        "'x'"
    )
    errors = errors_of(write(tmp_path, broken))
    find(
        errors,
        f"{SYNC}/transforms/AccountToCompany/map/websiteUrl",
        "target field 'websiteUrl' is not in the request schema of POST /companies nor in the "
        "request schema of PATCH /companies/{id}",
    )
    find(
        errors,
        f"{SYNC}/transforms/AccountToCompany/map/billingAddress.zip",
        "target field 'billingAddress.zip' is not in the request schema of POST /companies",
    )


def test_target_field_missing_from_entity_schema(tmp_path, acme):
    broken = copy.deepcopy(acme)
    fields = broken["x-synchronization"]["transforms"]["CompanyToAccount"]["map"]
    fields["website"] = "website"  # the canonical field is webSite
    fields["customValues.acmeScore"] = "score"  # customValues is open: allowed
    problem = find(
        errors_of(write(tmp_path, broken)),
        f"{SYNC}/transforms/CompanyToAccount/map/website",
        "target field 'website' is not in the canonical account schema",
    )
    assert problem.severity == "error"


def test_body_on_an_operation_without_request_body(tmp_path, acme):
    broken = copy.deepcopy(acme)
    broken["x-synchronization"]["objects"]["Account"]["push"]["delete"]["body"] = "AccountToCompany"
    errors = errors_of(write(tmp_path, broken))
    # 'body' is not allowed on delete by the meta-schema, and the operation takes none
    find(errors, f"{SYNC}/objects/Account/push/delete/body", "unknown key 'body'")


def test_unknown_transform_and_dependency_cycle(tmp_path, acme):
    broken = copy.deepcopy(acme)
    broken["x-synchronization"]["objects"]["Account"]["push"]["create"]["body"] = (
        "AccountToCompanny"
    )
    broken["x-synchronization"]["dependencies"]["account"] = ["case"]
    errors = errors_of(write(tmp_path, broken))
    problem = find(
        errors, f"{SYNC}/objects/Account/push/create/body", "unknown transform 'AccountToCompanny'"
    )
    assert "did you mean 'AccountToCompany'?" in problem.message
    find(errors, f"{SYNC}/dependencies/account", "dependency cycle: account → case → account")


def test_every_problem_is_listed_at_once(tmp_path, acme):
    broken = copy.deepcopy(acme)
    sync = broken["x-synchronization"]
    sync["objects"]["Account"]["entity"] = "acount"
    sync["objects"]["Account"]["push"]["create"]["operation"] = "createCompny"
    sync["objects"]["Contact"]["push"]["update"]["params"] = {}
    sync["transforms"]["ContactToPerson"]["map"]["lastName"] = "lastName &"
    sync["transforms"]["PersonToContact"]["map"]["nickname"] = "firstName"
    sync["transforms"]["CaseToTicket"]["map"]["status"] = "$lookup('caseStatuses', status)"
    errors = errors_of(write(tmp_path, broken))
    assert len(errors) == 6, "\n".join(p.format() for p in errors)
    lines = [p.line for p in errors]
    assert lines == sorted(lines), "problems are listed in file order"


def test_yaml_connector_problems_carry_yaml_lines(tmp_path, acme):
    broken = copy.deepcopy(acme)
    broken["x-synchronization"]["objects"]["Account"]["push"]["create"]["operation"] = (
        "createCompny"
    )
    path = write(tmp_path, broken, "connector.yaml")
    problem = find(
        errors_of(path), f"{SYNC}/objects/Account/push/create/operation", "unknown operation"
    )
    assert problem.line == line_of(path, "createCompny")
    valid = write(tmp_path, acme, "valid.yaml")
    document, problems = check_connector(valid)
    assert document is not None, [p.format() for p in problems]


def test_yaml_dates_stay_strings(tmp_path, acme):
    document = copy.deepcopy(acme)
    document["info"]["x-released"] = "2025-01-01"
    path = tmp_path / "dated.yaml"
    path.write_text(yaml.safe_dump(document).replace("'2025-01-01'", "2025-01-01"))
    loaded, problems = check_connector(path)
    assert loaded is not None, [p.format() for p in problems]
    assert loaded.document["info"]["x-released"] == "2025-01-01"


def test_yaml_keys_are_read_as_json_would_read_them():
    """A vendor's YAML with unquoted response codes (``201:``) and a property named
    ``true:`` loads: the keys are the strings written, so the $refs to them resolve."""
    loaded, problems = check_connector(LEDGER)
    assert loaded is not None, [p.format() for p in problems]
    paths = loaded.document["paths"]
    assert list(paths["/customers"]["post"]["responses"]) == ["201", "400"]
    created = deref(loaded.document, paths["/customers"]["post"]["responses"]["201"])
    assert created["description"] == "The customer"
    flags = loaded.document["components"]["schemas"]["Flags"]["properties"]
    assert list(flags) == ["true"]
    assert loaded.document["info"]["x-released"] == "2025-01-01"


def test_yaml_key_that_is_not_a_scalar_is_a_located_error(tmp_path):
    path = tmp_path / "complex-key.yaml"
    path.write_text("openapi: 3.0.3\npaths:\n  ? [a, b]\n  : {}\n")
    problem = errors_of(path)[0]
    assert "is not valid YAML" in problem.message and "not a scalar" in problem.message
    assert problem.line == 3


def test_random_damage_never_raises(tmp_path, acme):
    """Whatever the input, validation answers with problems, never an exception."""
    rng = random.Random(20261128)
    junk = [None, 0, -1, 3.5, True, "", "{", "$x(", [], {}, ["a"], {"a": 1}, "GET /", "#/x"]
    for round_ in range(int(os.environ.get("FUZZ_ROUNDS", "60"))):
        damaged = copy.deepcopy(acme)
        for _ in range(rng.randint(1, 6)):
            _damage(damaged["x-synchronization"], rng, junk)
        path = write(tmp_path, damaged, f"damaged{round_}.json")
        document, problems = check_connector(path)  # must not raise
        assert document is not None or problems


def test_random_damage_to_the_openapi_part_never_raises(tmp_path, acme):
    rng = random.Random(4242)
    junk = [None, 0, "", "{", [], {}, {"$ref": "#/nowhere"}, {"$ref": "other.json#/x"}, "GET /x"]
    for round_ in range(int(os.environ.get("FUZZ_ROUNDS", "40"))):
        damaged = copy.deepcopy(acme)
        for _ in range(rng.randint(1, 4)):
            _damage(damaged, rng, junk)
        path = write(tmp_path, damaged, f"damaged{round_}.json")
        document, problems = check_connector(path)
        assert document is not None or problems


def test_numbers_and_odd_shapes_in_the_openapi_part_never_raise(tmp_path, acme):
    """Whatever a vendor's spec holds where OpenAPI wants something else, validation
    answers with problems, never an exception (the compiler and the reach walk too)."""
    rng = random.Random(20261202)
    junk = [None, 0, 3.5, True, "", "{x}", [], {}, ["a"], {"a": 1}, {"$ref": "#/x"},
            {"$ref": 5}, {"$ref": "#/components/schemas"}, {"type": "integer", "default": "z"},
            {"name": "a", "in": "path"}, {"style": "deepObject"}]
    openapi = {k: v for k, v in acme.items() if k != "x-synchronization"}
    for round_ in range(int(os.environ.get("FUZZ_ROUNDS", "60"))):
        damaged = copy.deepcopy(openapi)
        for _ in range(rng.randint(1, 6)):
            _damage(damaged, rng, junk)
        path = write(tmp_path, {**damaged, "x-synchronization": acme["x-synchronization"]},
                     f"damaged{round_}.json")
        document, problems = check_connector(path)  # must not raise
        assert document is not None or problems


def _damage(node, rng, junk):
    while True:
        if isinstance(node, dict) and node:
            key = rng.choice(list(node))
            if rng.random() < 0.35 or not isinstance(node[key], dict | list):
                node[key] = copy.deepcopy(rng.choice(junk))
                return
            node = node[key]
        elif isinstance(node, list) and node:
            index = rng.randrange(len(node))
            if rng.random() < 0.5 or not isinstance(node[index], dict | list):
                node[index] = copy.deepcopy(rng.choice(junk))
                return
            node = node[index]
        else:
            return
