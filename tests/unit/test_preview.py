"""``bss-sync preview`` shows exactly the request a record becomes; ``validate`` and
``bundle`` through the real command-line entry point."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from shared.cli.main import main
from shared.connector import load_connector
from shared.connector.paging import OVERLAP, PageRequest
from shared.connector.preview import ListingStart, preview_pull, preview_push
from tests.fixtures.vendor_specs import VendorSpecs

ROOT = Path(__file__).resolve().parents[2]
ACME = ROOT / "connectors" / "acme-crm.json"
HUBSPOT = ROOT / "connectors" / "hubspot-crm.overlay.json"
DATA = ROOT / "tests" / "data"
# Small published specs of our own with an overlay extending their URLs, as HUBSPOT does.
WIDGETS = [DATA / "overlay" / "widgets.json", DATA / "overlay" / "gadgets.json"]
WIDGETS_OVERLAY = DATA / "overlay" / "widgets.overlay.json"


@pytest.fixture(scope="module")
def acme():
    return load_connector(ACME)


@pytest.fixture(scope="module")
def hubspot(vendor_specs: VendorSpecs):
    return load_connector(vendor_specs.files, overlay=HUBSPOT)


@pytest.fixture(scope="module")
def vendor_validator(vendor_specs: VendorSpecs):
    """A validator over HubSpot's own, unmodified spec — not our bundle of it."""

    def validator(spec_file: str, schema_name: str) -> OAS30Validator:
        spec = json.loads((vendor_specs.folder / spec_file).read_text())
        registry = Registry().with_resource(
            "urn:vendor", Resource.from_contents(spec, default_specification=DRAFT4)
        )
        return OAS30Validator(
            {"$ref": f"urn:vendor#/components/schemas/{schema_name}"}, registry=registry
        )

    return validator


def record(name: str) -> dict:
    return json.loads((DATA / name).read_text())


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


def test_hubspot_create_bodies_satisfy_hubspots_own_schemas(hubspot, vendor_validator):
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


def test_hubspot_update_body_satisfies_hubspots_schema(hubspot, vendor_validator):
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


def test_hubspot_pull_preview_with_since(hubspot, vendor_validator):
    preview = preview_pull(
        hubspot,
        hubspot.objects["Company"],
        record("hubspot/company.json"),
        since=datetime(2025, 6, 1, tzinfo=UTC),
    )
    assert preview.errors == []
    search, _archived = preview.requests
    (group,) = search.body["filterGroups"]
    assert group["filters"][0]["value"] == "1748736000000"
    assert preview.record["industry"] == "Software"
    assert preview.record["numberOfEmployees"] == 350
    validator = vendor_validator("hubspot-crm-companies-v3.json", "PublicObjectSearchRequest")
    assert list(validator.iter_errors(search.body)) == []


def sent_by_discovery(doc, obj, since, page=None):
    """The request discovery's lister builds for that page (credentials not yet applied)."""
    from services.dispatcher.listing import list_request
    from shared.connector import paging
    from shared.connector.preview import _context
    from shared.connector.request import server_url

    call = obj.pull_list
    return list_request(call, server_url(doc), _context(doc, None),
                        page or paging.first_page(call, since), since)


CURSOR = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def test_acme_pull_preview_from_a_cursor_is_the_request_discovery_sends(acme):
    obj = acme.objects["Account"]
    preview = preview_pull(acme, obj, start=ListingStart(cursor=CURSOR))
    assert preview.errors == [] and preview.record is None
    (listing,) = preview.requests
    assert (listing.method, listing.url) == (
        "GET", "http://127.0.0.1:3000/companies?_sort=updatedAt&_order=asc&_page=1&_limit=100"
               "&updatedAt_gte=2026-03-01T09%3A59%3A00Z")  # the cursor minus the overlap
    assert listing.headers["X-Api-Key"] == "***"
    discovery = sent_by_discovery(acme, obj, CURSOR - OVERLAP)
    assert (discovery.method, discovery.url) == (listing.method, listing.url)
    title = preview.sections[0][0]
    assert title == ("pull.list (Account): first page of records changed since "
                     "2026-03-01T09:59:00Z (the cursor 2026-03-01T10:00:00Z minus 60 s)")
    assert "pull.list: the next pages ask _page=2, … until a page comes back empty" in (
        preview.notes)


def test_acme_pull_preview_full_and_given_since(acme):
    obj = acme.objects["Account"]
    full = preview_pull(acme, obj, start=ListingStart(full=True))
    assert "updatedAt_gte" not in full.requests[0].url
    assert "full listing" in full.sections[0][0]
    exact = preview_pull(acme, obj, since=CURSOR)
    assert exact.requests[0].url.endswith("&updatedAt_gte=2026-03-01T10%3A00%3A00Z")


def test_hubspot_pull_preview_is_a_search_from_the_cursor_with_the_after_cursor(
        hubspot, vendor_validator):
    obj = hubspot.objects["Company"]
    preview = preview_pull(hubspot, obj, start=ListingStart(cursor=CURSOR))
    assert preview.errors == []
    search, archived = preview.requests
    assert (search.method, search.url) == (
        "POST", "https://api.hubapi.com/crm/v3/objects/companies/search")
    assert search.headers["Authorization"] == "Bearer ***"
    since_ms = str(int((CURSOR - OVERLAP).timestamp() * 1000))
    assert search.body["filterGroups"] == [{"filters": [
        {"propertyName": "hs_lastmodifieddate", "operator": "GTE", "value": since_ms}]}]
    assert (search.body["after"], search.body["limit"]) == ("0", 100)
    assert search.body == sent_by_discovery(hubspot, obj, CURSOR - OVERLAP).body
    validator = vendor_validator("hubspot-crm-companies-v3.json", "PublicObjectSearchRequest")
    assert list(validator.iter_errors(search.body)) == []
    assert ("pull.list: the next pages set the body field 'after' to the answer's "
            "/paging/next/after, until it is missing or repeats") in preview.notes
    # archived companies: listed whole (HubSpot cannot filter them by time)
    assert (archived.method, archived.url) == (
        "GET", "https://api.hubapi.com/crm/v3/objects/companies?archived=true&limit=100"
               "&properties=hs_object_id")
    assert ("pull.deletedList: the request cannot filter (incremental in: client): every "
            "record is listed, discovery keeps those whose /archivedAt is at or after "
            "2026-03-01T09:59:00Z") in preview.notes

    # a listing stopped after page 2 resumes with the cursor HubSpot gave
    page = PageRequest(query={}, body_fields={"after": "NTI1Cg%3D%3D"}, cursor="NTI1Cg%3D%3D",
                       number=3)
    resumed = preview_pull(hubspot, obj, start=ListingStart(since=CURSOR, resume=page))
    search, _archived = resumed.requests
    assert search.body["after"] == "NTI1Cg%3D%3D"
    assert search.body == sent_by_discovery(hubspot, obj, CURSOR, page).body
    assert "page 3, where the stopped listing resumes" in resumed.sections[0][0]

    full = preview_pull(hubspot, obj, start=ListingStart(full=True))
    assert full.requests[0].body["filterGroups"] == []


def test_hubspot_contacts_pull_with_the_lastmodifieddate_filter(hubspot, vendor_validator):
    preview = preview_pull(hubspot, hubspot.objects["Contact"], start=ListingStart(cursor=CURSOR))
    search, _archived = preview.requests
    assert search.url == "https://api.hubapi.com/crm/v3/objects/contacts/search"
    assert search.body["filterGroups"][0]["filters"][0]["propertyName"] == "lastmodifieddate"
    validator = vendor_validator("hubspot-crm-contacts-v3.json", "PublicObjectSearchRequest")
    assert list(validator.iter_errors(search.body)) == []


def test_a_tombstone_sample_says_what_the_puller_does(hubspot):
    company = record("hubspot/company.json") | {"archived": True}
    preview = preview_pull(hubspot, hubspot.objects["Company"], company)
    assert preview.errors == [] and preview.record is None
    assert any("pull.deleted is true for this record" in n for n in preview.notes)


def test_a_deleted_list_is_previewed_after_the_list(tmp_path):
    document = json.loads(ACME.read_text())
    document["x-synchronization"]["objects"]["Account"]["pull"]["deletedList"] = {
        "operation": "listCompanies", "params": {"_sort": "updatedAt"}, "records": "",
        "incremental": {"param": "updatedAt_gte", "cursorField": "/updatedAt"},
        "pagination": {"type": "offset", "param": "_start", "limitParam": "_limit",
                       "limit": 20}}
    path = tmp_path / "acme.json"
    path.write_text(json.dumps(document))
    doc = load_connector(path)
    preview = preview_pull(doc, doc.objects["Account"], start=ListingStart(cursor=CURSOR),
                           deleted_start=ListingStart(full=True))
    listing, deleted = preview.requests
    assert "updatedAt_gte=" in listing.url
    assert deleted.url == "http://127.0.0.1:3000/companies?_sort=updatedAt&_start=0&_limit=20"
    assert preview.sections[1][0].startswith("pull.deletedList (Account): first page of a full")


# -- the command line ------------------------------------------------------------------


def test_cli_validate_ok_prints_one_summary_line_per_connector(tmp_path, capsys):
    copy = tmp_path / "acme-copy.json"
    copy.write_text(ACME.read_text())
    assert main(["validate", str(ACME), str(copy)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2
    assert out[0].startswith(f"{ACME}: OK — Acme CRM 1.2.0")
    assert out[1].startswith(f"{copy}: OK — Acme CRM 1.2.0")


def test_cli_validate_hubspot_with_the_published_specs_on_the_command_line(
    vendor_specs: VendorSpecs, capsys
):
    files = [str(f) for f in vendor_specs.files]
    assert main(["validate", *files, "--overlay", str(HUBSPOT)]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(f"{' + '.join(files)} + {HUBSPOT}: OK — HubSpot CRM")
    assert "Company(account, push/pull), Contact(contact, push/pull)" in line


SAMPLE = ["--object", "Widget", "--direction", "push",
          "--record", str(DATA / "entities" / "account.json")]


@pytest.mark.parametrize(("command", "options"), [
    ("validate", []), ("preview", SAMPLE), ("bundle", ["-o", "{tmp}/bundle.json"]),
])
def test_cli_specs_given_before_the_overlay(tmp_path, capsys, command, options):
    options = [o.replace("{tmp}", str(tmp_path)) for o in options]
    files = [str(f) for f in WIDGETS]
    assert main([command, *files, "--overlay", str(WIDGETS_OVERLAY), *options]) == 0
    out = capsys.readouterr().out
    expected = {
        "validate": f"{' + '.join(files)} + {WIDGETS_OVERLAY}: OK — Widgets and gadgets",
        "preview": "POST https://api.widgets.example/widgets",
        "bundle": f"wrote {tmp_path}/bundle.json",
    }
    assert expected[command] in out


@pytest.mark.parametrize(("command", "options"), [
    ("validate", []), ("preview", SAMPLE), ("bundle", []),
])
def test_cli_an_overlay_alone_extending_urls_is_one_located_sentence(capsys, command, options):
    assert main([command, str(HUBSPOT), *options]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    heading, problem = captured.err.splitlines()  # the command's heading, one problem
    assert heading in (f"{HUBSPOT}: INVALID — 1 problem(s):", "the connector is invalid:")
    published = "https://raw.githubusercontent.com/HubSpot/HubSpot-public-api-spec-collection/main"
    assert problem == (
        f"{HUBSPOT}:7: /extends: bss-sync does not fetch "
        f"{published}/PublicApiSpecs/CRM/Companies/Rollouts/424/v3/companies.json and "
        f"{published}/PublicApiSpecs/CRM/Contacts/Rollouts/424/v3/contacts.json: download "
        f"them and give the files before --overlay (bss-sync {command} companies.json "
        f"contacts.json --overlay {HUBSPOT}); or map each to its file with --ref URL=FILE"
    )


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


def test_cli_bundle_writes_a_document_standard_tools_accept(tmp_path, vendor_specs: VendorSpecs):
    from openapi_spec_validator import validate

    output = tmp_path / "hubspot.bundle.json"
    files = [str(f) for f in vendor_specs.files]
    arguments = ["bundle", *files, "--overlay", str(HUBSPOT), "-o", str(output)]
    assert main([*arguments, "--json-media-types"]) == 0
    bundle = json.loads(output.read_text())
    validate(bundle)  # raises if standard OpenAPI tooling would refuse it
    assert "x-synchronization" in bundle
    assert "*/*" not in output.read_text()


def test_cli_preview_pull_shows_the_listing_request_without_a_record(capsys):
    code = main(["preview", str(ACME), "--object", "Account", "--direction", "pull",
                 "--cursor", "2026-03-01T10:00:00Z", "--var", "port=3999"])
    assert code == 0
    out = capsys.readouterr().out
    assert ("GET http://127.0.0.1:3999/companies?_sort=updatedAt&_order=asc&_page=1&_limit=100"
            "&updatedAt_gte=2026-03-01T09%3A59%3A00Z") in out
    assert "X-Api-Key: ***" in out
    assert "── canonical" not in out


def test_cli_preview_hubspot_pull_full_with_a_record(vendor_specs: VendorSpecs, capsys):
    files = [str(f) for f in vendor_specs.files]
    code = main(["preview", *files, "--overlay", str(HUBSPOT), "--object", "Company",
                 "--direction", "pull", "--full",
                 "--record", str(DATA / "hubspot" / "company.json")])
    assert code == 0
    out = capsys.readouterr().out
    assert "POST https://api.hubapi.com/crm/v3/objects/companies/search" in out
    assert "Authorization: Bearer ***" in out
    assert '"filterGroups": [],' in out and '"after": "0"' in out
    assert "── canonical account (pull Company) ──" in out
    assert "✓ valid against schemas/entities/account.schema.json" in out


@pytest.mark.parametrize(("options", "words"), [
    (["--direction", "push"], "preview --direction push needs --record FILE"),
    (["--direction", "push", "--record", str(DATA / "entities" / "account.json"), "--full"],
     "--full, --cursor, --since and --instance are for --direction pull"),
    (["--direction", "pull", "--full", "--cursor", "2026-03-01T10:00:00Z"],
     "--full lists every record: it takes no --cursor or --since"),
])
def test_cli_preview_refuses_options_that_do_not_go_together(capsys, options, words):
    assert main(["preview", str(ACME), "--object", "Account", *options]) == 2
    assert words in capsys.readouterr().err
