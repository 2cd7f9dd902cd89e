"""Parameters go where the operation declares them (tests/data/vendor/crm.yaml): an
incremental or page parameter declared ``in: header`` is a header, ``in: cookie`` a
cookie, never the query string; a required header parameter the credential sends (an
apiKey scheme of that name) counts as provided."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from shared.connector import check_connector, load_connector
from shared.connector.paging import PageRequest, first_page, list_request, next_page
from shared.connector.preview import ListingStart, preview_pull
from shared.transform import TransformContext

ROOT = Path(__file__).resolve().parents[2]
CRM = ROOT / "tests" / "data" / "vendor" / "crm.yaml"
SINCE = datetime(2025, 3, 1, tzinfo=UTC)
SYNC = "/x-synchronization/objects/Contact"


@pytest.fixture(scope="module")
def crm():
    return load_connector(CRM)


def context(crm) -> TransformContext:
    return TransformContext(lookups=crm.lookups, variables=crm.variables({}))


def rewritten(tmp_path: Path, change) -> Path:
    document = yaml.safe_load(CRM.read_text())
    change(document)
    path = tmp_path / "crm.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_the_since_value_is_a_header_and_the_tenant_a_cookie(crm):
    call = crm.objects["Contact"].pull_list
    plan = list_request(call, "https://crm.example/api/v3", context(crm),
                        first_page(call, SINCE), SINCE)
    assert plan.url == "https://crm.example/api/v3/contacts?page=1&per_page=50"
    assert plan.headers["If-Modified-Since"] == "2025-03-01T00:00:00Z"
    assert plan.headers["Cookie"] == "tenant=northwind"

    second = next_page(call, first_page(call, SINCE), {"data": [{}]}, None, 1)
    plan = list_request(call, "https://crm.example/api/v3", context(crm), second, SINCE)
    assert plan.url == "https://crm.example/api/v3/contacts?page=2&per_page=50"
    assert plan.headers["If-Modified-Since"] == "2025-03-01T00:00:00Z"


def test_a_header_parameter_still_goes_with_a_next_page_url(crm):
    """A next link carries the server's query, not our headers: they go on every page."""
    call = crm.objects["Contact"].pull_list
    page = PageRequest({"If-Modified-Since": "2025-03-01T00:00:00Z", "page": 1}, {},
                       url="/api/v3/contacts?after=abc")
    plan = list_request(call, "https://crm.example/api/v3", context(crm), page, SINCE)
    assert plan.url == "https://crm.example/api/v3/contacts?after=abc"
    assert plan.headers["If-Modified-Since"] == "2025-03-01T00:00:00Z"


def test_a_header_parameter_matches_in_any_case(crm):
    operation = crm.operations["listContacts"]
    assert operation.parameter("if-modified-since")["name"] == "If-Modified-Since"
    assert operation.parameter("PAGE") is None, "a query parameter's name is exact"


def test_a_required_header_the_api_key_sends_counts_as_provided(tmp_path):
    document, problems = check_connector(CRM)
    assert document is not None, [p.format() for p in problems]

    def key_in_query(spec):
        spec["components"]["securitySchemes"]["apiKey"]["in"] = "query"

    document, problems = check_connector(rewritten(tmp_path, key_in_query))
    assert document is None
    messages = {(p.pointer, p.message) for p in problems if p.severity == "error"}
    assert messages == {
        (f"{SYNC}/push/create/params",
         "required header parameter 'x-api-key' of POST /contacts is never provided"),
        (f"{SYNC}/pull/list/params",
         "required header parameter 'x-api-key' of GET /contacts is never provided"),
    }


def test_a_required_header_given_in_headers_counts_as_provided(tmp_path):
    def source_in_headers(spec):
        create = spec["x-synchronization"]["objects"]["Contact"]["push"]["create"]
        del create["params"]["X-Request-Source"]
        create["headers"] = {"x-request-source": "bss-sync"}

    document, problems = check_connector(rewritten(tmp_path, source_in_headers))
    assert document is not None, [p.format() for p in problems]

    def source_nowhere(spec):
        create = spec["x-synchronization"]["objects"]["Contact"]["push"]["create"]
        del create["params"]["X-Request-Source"]

    document, problems = check_connector(rewritten(tmp_path, source_nowhere))
    assert document is None
    assert any("'X-Request-Source' of POST /contacts is never provided" in p.message
               for p in problems)


def test_preview_shows_the_listing_with_its_header(crm):
    preview = preview_pull(crm, crm.objects["Contact"], start=ListingStart(since=SINCE))
    text = preview.render()
    assert "GET https://crm.example/api/v3/contacts?page=1&per_page=50\n" in text
    assert "If-Modified-Since: 2025-03-01T00:00:00Z" in text
    assert preview.errors == []
