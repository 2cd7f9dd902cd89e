"""``bss-sync preview`` shows exactly the request a record becomes; ``validate`` and
``bundle`` through the real command-line entry point."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from shared.cli.main import main
from shared.connector import load_connector
from shared.connector.preview import preview_pull, preview_push

ROOT = Path(__file__).resolve().parents[2]
ACME = ROOT / "connectors" / "acme-crm.json"
HUBSPOT = ROOT / "connectors" / "hubspot-crm.overlay.json"
VENDOR = ROOT.parent / "shared" / "vendor-specs"
DATA = ROOT / "tests" / "data"


@pytest.fixture(scope="module")
def acme():
    return load_connector(ACME)


@pytest.fixture(scope="module")
def hubspot():
    return load_connector(HUBSPOT)


def record(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def vendor_validator(spec_file: str, schema_name: str) -> OAS30Validator:
    """A validator over HubSpot's own, unmodified spec — not our bundle of it."""
    spec = json.loads((VENDOR / spec_file).read_text())
    registry = Registry().with_resource(
        "urn:vendor", Resource.from_contents(spec, default_specification=DRAFT4)
    )
    return OAS30Validator(
        {"$ref": f"urn:vendor#/components/schemas/{schema_name}"}, registry=registry
    )


# -- push ------------------------------------------------------------------------------


def test_acme_push_create_shows_the_exact_request(acme):
    account = record("entities/account.json")
    preview = preview_push(
        acme,
        acme.objects["Account"],
        account,
        "create",
        variables={"host": "crm.acme.test", "port": "8443", "scheme": "https"},
    )
    assert preview.errors == []
    match, create = preview.requests
    assert (match.method, match.url) == (
        "GET",
        "https://crm.acme.test:8443/companies?accountNumber=C-000412",
    )
    assert create.method == "POST"
    assert create.url == "https://crm.acme.test:8443/companies"
    assert create.headers["X-Api-Key"] == "***"
    assert len(create.headers["Idempotency-Key"]) == 36
    body = create.body
    assert body["name"] == account["name"]
    assert body["accountNumber"] == "C-000412"
    assert body["industry"] == "OTHER", "an unmapped industry takes the fallback"
    assert body["kind"] == "CUSTOMER"
    assert body["billingAddress"] == {
        "street": "12 rue de la Paix",
        "street2": "Bâtiment B, 3e étage",
        "city": "Paris",
        "region": "Île-de-France",
        "postalCode": "75002",
        "country": "FR",
    }
    assert body["parentCompanyId"].startswith("<account acc_01HQ")
    assert "fax" not in body and "description" not in body
    text = preview.render()
    assert "POST https://crm.acme.test:8443/companies" in text
    assert "✓ push create: Account (account): body valid against the request schema" in text


def test_push_update_uses_the_external_id_and_before_request(acme):
    case = record("entities/case.json")
    preview = preview_push(acme, acme.objects["Case"], case, "update", external_id="T 42")
    before, update = preview.requests
    assert (before.method, before.url) == ("GET", "http://127.0.0.1:3000/tickets/T%2042")
    assert (update.method, update.url) == ("PATCH", "http://127.0.0.1:3000/tickets/T%2042")
    assert update.headers["If-Match"] == "<header:ETag of GET /tickets/{id}>"
    assert "Idempotency-Key" not in update.headers, "idempotency is declared for create only"


def test_push_body_that_breaks_the_request_schema_is_reported(acme):
    account = record("entities/account.json")
    broken = copy.deepcopy(account)
    broken["addresses"][0]["countryCode"] = "France"  # Acme wants two capital letters
    preview = preview_push(acme, acme.objects["Account"], broken, "create")
    assert any(
        "body breaks the request schema of POST /companies at /billingAddress/country" in e
        for e in preview.errors
    ), preview.errors


def test_push_delete_has_no_body(acme):
    preview = preview_push(
        acme, acme.objects["Account"], record("entities/account.json"), "delete", external_id="9"
    )
    (delete,) = preview.requests
    assert (delete.method, delete.url, delete.has_body) == (
        "DELETE",
        "http://127.0.0.1:3000/companies/9",
        False,
    )


def test_hubspot_create_bodies_satisfy_hubspots_own_schemas(hubspot):
    account = record("entities/account.json")
    company = preview_push(hubspot, hubspot.objects["Company"], account, "create")
    assert company.errors == []
    (create,) = company.requests
    assert create.url == "https://api.hubapi.com/crm/v3/objects/companies"
    assert create.headers["Authorization"] == "Bearer ***"
    assert create.body["properties"]["domain"] == "www.northwind-logistics.fr"
    assert create.body["properties"]["numberofemployees"] == "420"
    assert create.body["associations"] == []
    validator = vendor_validator(
        "hubspot-crm-companies-v3.json", "SimplePublicObjectInputForCreate"
    )
    assert list(validator.iter_errors(create.body)) == []

    contact = preview_push(
        hubspot, hubspot.objects["Contact"], record("entities/contact.json"), "create"
    )
    assert contact.errors == []
    search, create_contact = contact.requests
    assert search.url.endswith("/crm/v3/objects/contacts/search")
    search_validator = vendor_validator("hubspot-crm-contacts-v3.json", "PublicObjectSearchRequest")
    assert list(search_validator.iter_errors(search.body)) == []
    contact_validator = vendor_validator(
        "hubspot-crm-contacts-v3.json", "SimplePublicObjectInputForCreate"
    )
    assert list(contact_validator.iter_errors(create_contact.body)) == []
    (association,) = create_contact.body["associations"]
    assert association["types"] == [
        {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 279}
    ]


def test_hubspot_update_body_satisfies_hubspots_schema(hubspot):
    preview = preview_push(
        hubspot,
        hubspot.objects["Company"],
        record("entities/account.json"),
        "update",
        external_id="18254637001",
    )
    (update,) = preview.requests
    assert update.method == "PATCH"
    assert update.url == "https://api.hubapi.com/crm/v3/objects/companies/18254637001"
    assert "associations" not in update.body
    validator = vendor_validator("hubspot-crm-companies-v3.json", "SimplePublicObjectInput")
    assert list(validator.iter_errors(update.body)) == []


def test_contact_without_email_skips_the_match(hubspot):
    contact = record("entities/contact.json")
    contact["email"] = None
    preview = preview_push(hubspot, hubspot.objects["Contact"], contact, "create")
    assert [r.url.rsplit("/", 1)[1] for r in preview.requests] == ["contacts"]
    assert any("match is skipped" in n for n in preview.notes)


# -- pull ------------------------------------------------------------------------------


def test_acme_pull_preview_gives_a_valid_canonical_account(acme):
    preview = preview_pull(acme, acme.objects["Account"], record("acme/company.json"))
    assert preview.errors == []
    assert preview.record["industry"] == "Telecommunications"
    assert preview.record["type"] == "customer"
    assert preview.record["addresses"][0]["countryCode"] == "DE"
    (listing,) = preview.requests
    assert listing.url == (
        "http://127.0.0.1:3000/companies?_sort=updatedAt&_order=asc&_page=1&_limit=100"
    )


def test_pull_preview_reports_schema_violations(acme):
    company = record("acme/company.json")
    company["billingAddress"]["country"] = "Germany"
    preview = preview_pull(acme, acme.objects["Account"], company)
    assert any(
        "breaks schemas/entities/account.schema.json at /addresses/0/countryCode" in e
        for e in preview.errors
    ), preview.errors


def test_hubspot_pull_preview_with_since(hubspot):
    from datetime import UTC, datetime

    preview = preview_pull(
        hubspot,
        hubspot.objects["Company"],
        record("hubspot/company.json"),
        since=datetime(2025, 6, 1, tzinfo=UTC),
    )
    assert preview.errors == []
    (search,) = preview.requests
    (group,) = search.body["filterGroups"]
    assert group["filters"][0]["value"] == "1748736000000"
    assert preview.record["industry"] == "Software"
    assert preview.record["numberOfEmployees"] == 350
    validator = vendor_validator("hubspot-crm-companies-v3.json", "PublicObjectSearchRequest")
    assert list(validator.iter_errors(search.body)) == []


# -- the command line ------------------------------------------------------------------


def test_cli_validate_ok_prints_one_summary_line_per_connector(capsys):
    assert main(["validate", str(ACME), str(HUBSPOT)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2
    assert out[0].startswith(f"{ACME}: OK — Acme CRM 1.2.0")
    assert "Company(account, push/pull)" in out[1]


def test_cli_validate_lists_every_problem_and_exits_1(tmp_path, capsys):
    broken = json.loads(ACME.read_text())
    broken["x-synchronization"]["objects"]["Account"]["push"]["create"]["operation"] = "x"
    broken["x-synchronization"]["transforms"]["ContactToPerson"]["map"]["lastName"] = "$("
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken, indent=2))
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "INVALID — 2 problem(s)" in err
    assert f"{path}:" in err and "/x-synchronization/objects/Account/push/create/operation" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("content", ["", "\x00\x01", "[", "null", "42", "openapi: [", "{}"])
def test_cli_validate_never_prints_a_traceback(tmp_path, capsys, content):
    path = tmp_path / "junk.yaml"
    path.write_text(content)
    assert main(["validate", str(path)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "internal error" not in captured.err
    assert str(path) in captured.err


def test_cli_preview_prints_the_request(capsys):
    code = main(
        [
            "preview",
            str(ACME),
            "--object",
            "Account",
            "--direction",
            "push",
            "--record",
            str(DATA / "entities" / "account.json"),
            "--var",
            "port=3999",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "POST http://127.0.0.1:3999/companies" in out
    assert '"accountNumber": "C-000412"' in out


def test_cli_preview_unknown_object(capsys):
    code = main(
        [
            "preview",
            str(ACME),
            "--object",
            "Invoice",
            "--direction",
            "push",
            "--record",
            str(DATA / "entities" / "account.json"),
        ]
    )
    assert code == 1
    assert "no object 'Invoice' in the connector; objects: Account, Contact, Case" in (
        capsys.readouterr().err
    )


def test_cli_bundle_writes_a_document_standard_tools_accept(tmp_path):
    from openapi_spec_validator import validate

    output = tmp_path / "hubspot.bundle.json"
    assert main(["bundle", str(HUBSPOT), "-o", str(output), "--json-media-types"]) == 0
    bundle = json.loads(output.read_text())
    validate(bundle)  # raises if standard OpenAPI tooling would refuse it
    assert "x-synchronization" in bundle
    assert "*/*" not in output.read_text()
