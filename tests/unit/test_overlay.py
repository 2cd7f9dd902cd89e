"""Overlays (OpenAPI Overlay 1.0) and connectors built from several vendor specs."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from shared.connector import check_connector, load_connector
from shared.connector.bundle import merge_documents
from shared.connector.openapi import index_operations
from shared.connector.overlay import apply_overlay, check_overlay
from shared.connector.source import parse_source

ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT.parent / "shared" / "vendor-specs"
COMPANIES = VENDOR / "hubspot-crm-companies-v3.json"
CONTACTS = VENDOR / "hubspot-crm-contacts-v3.json"
HUBSPOT_OVERLAY = ROOT / "connectors" / "hubspot-crm.overlay.json"


def source(data: dict, name: str = "doc.json"):
    return parse_source(json.dumps(data, indent=2), Path(name))


# -- Overlay 1.0 semantics ------------------------------------------------------------


def test_update_merges_objects_recursively_and_replaces_scalars():
    document = {"info": {"title": "A", "version": "1", "contact": {"name": "x"}}, "tags": []}
    overlay = {
        "overlay": "1.0.0",
        "actions": [{"target": "$.info", "update": {"title": "B", "contact": {"email": "e@x"}}}],
    }
    result, problems, _ = apply_overlay(document, overlay)
    assert problems == []
    assert result["info"] == {
        "title": "B",
        "version": "1",
        "contact": {"name": "x", "email": "e@x"},
    }
    assert document["info"]["title"] == "A", "the input document is not modified"


def test_update_on_an_array_appends():
    document = {"tags": [{"name": "a"}]}
    overlay = {
        "overlay": "1.0.0",
        "actions": [
            {"target": "$.tags", "update": {"name": "b"}},
            {"target": "$.tags", "update": [{"name": "c"}, {"name": "d"}]},
        ],
    }
    result, problems, _ = apply_overlay(document, overlay)
    assert problems == []
    assert [t["name"] for t in result["tags"]] == ["a", "b", "c", "d"]


def test_remove_and_wildcard_targets():
    document = {
        "paths": {
            "/a": {"get": {"x-internal": True, "summary": "a"}, "post": {"x-internal": True}},
            "/b": {"get": {"summary": "b"}},
        }
    }
    overlay = {
        "overlay": "1.0.0",
        "actions": [
            {"target": "$.paths.*.*['x-internal']", "remove": True},
            {"target": "$.paths['/b']", "remove": True},
        ],
    }
    result, problems, _ = apply_overlay(document, overlay)
    assert problems == []
    assert result == {"paths": {"/a": {"get": {"summary": "a"}, "post": {}}}}


def test_a_target_that_matches_nothing_is_reported():
    overlay = {
        "overlay": "1.0.0",
        "actions": [{"target": "$.paths['/renamed-by-the-vendor']", "update": {"x": 1}}],
    }
    _, problems, _ = apply_overlay({"paths": {}}, overlay)
    (problem,) = problems
    assert problem.pointer == "/actions/0/target"
    assert "matches nothing" in problem.message


def test_overlay_structure_is_checked():
    problems = check_overlay(
        {
            "overlay": "2.0.0",
            "actions": [{"target": "$.paths[", "update": {}}, {"description": "no target"}, "junk"],
        }
    )
    messages: dict[str, list[str]] = {}
    for problem in problems:
        messages.setdefault(problem.pointer, []).append(problem.message)
    assert "not supported" in messages["/overlay"][0]
    assert messages["/actions/0/target"][0].startswith("invalid JSONPath")
    assert messages["/actions/1"] == [
        "an action needs a 'target' JSONPath string",
        "an action needs 'update' or 'remove: true'",
    ]
    assert messages["/actions/2"] == ["an action must be an object"]


# -- several vendor specs, one connector -------------------------------------------------


def test_merging_renames_conflicting_components_and_rewrites_refs():
    first = {
        "openapi": "3.0.1",
        "info": {"title": "Companies v3", "version": "3"},
        "paths": {
            "/c": {
                "post": {
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Input"}}
                        }
                    },
                    "responses": {},
                }
            }
        },
        "components": {
            "schemas": {"Input": {"type": "object", "required": ["a"]}, "Same": {"type": "string"}}
        },
    }
    second = {
        "openapi": "3.0.1",
        "info": {"title": "Contacts v3", "version": "3"},
        "paths": {
            "/p": {
                "post": {
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Input"}}
                        }
                    },
                    "security": [{"oauth2": ["contacts"]}],
                    "responses": {},
                }
            }
        },
        "components": {
            "schemas": {"Input": {"type": "object", "required": ["b"]}, "Same": {"type": "string"}},
            "securitySchemes": {"oauth2": {"type": "oauth2", "flows": {}}},
        },
    }
    first["components"]["securitySchemes"] = {"oauth2": {"type": "oauth2", "flows": {"x": {}}}}
    bundle, problems, _ = merge_documents([source(first, "a.json"), source(second, "b.json")])
    assert problems == []
    schemas = bundle["components"]["schemas"]
    assert schemas["Input"]["required"] == ["a"]
    assert schemas["ContactsV3Input"]["required"] == ["b"]
    assert "ContactsV3Same" not in schemas, "identical definitions are shared"
    p_schema = bundle["paths"]["/p"]["post"]["requestBody"]["content"]["application/json"]
    assert p_schema["schema"]["$ref"] == "#/components/schemas/ContactsV3Input"
    assert bundle["paths"]["/p"]["post"]["security"] == [{"ContactsV3oauth2": ["contacts"]}]
    assert "ContactsV3oauth2" in bundle["components"]["securitySchemes"]


def test_the_same_path_defined_differently_is_a_problem():
    first = {
        "openapi": "3.0.1",
        "info": {"title": "A", "version": "1"},
        "paths": {"/x": {"get": {"summary": "one", "responses": {}}}},
    }
    second = copy.deepcopy(first)
    second["paths"]["/x"]["get"]["summary"] = "two"
    _, problems, _ = merge_documents([source(first, "a.json"), source(second, "b.json")])
    (problem,) = problems
    assert problem.file == "b.json" and problem.pointer == "/paths/~1x/get"
    assert "also defined, differently" in problem.message


# -- the HubSpot connector, from the published specs ---------------------------------------


def test_hubspot_overlay_validates_against_the_published_specs():
    document, problems = check_connector(HUBSPOT_OVERLAY)
    assert document is not None, [p.format() for p in problems]
    assert set(document.objects) == {"Company", "Contact"}
    # The vendor's operationIds are unusable ("post-/crm/v3/objects/companies_create"),
    # so the connector names operations as "METHOD /path".
    create = document.objects["Company"].push["create"].operation
    assert create.operation_id == "post-/crm/v3/objects/companies_create"
    contact_create = document.objects["Contact"].push["create"].operation
    assert contact_create.path == "/crm/v3/objects/contacts"
    # The contacts spec's differing components were renamed, not lost.
    ref = contact_create.raw["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/ContactsSimplePublicObjectInputForCreate"


def test_hubspot_specs_plus_overlay_given_explicitly(tmp_path):
    document = load_connector([COMPANIES, CONTACTS], overlay=HUBSPOT_OVERLAY)
    alone = load_connector(HUBSPOT_OVERLAY)
    assert document.sha256 == alone.sha256


def test_vendor_release_is_a_file_swap(tmp_path):
    """A new vendor release replaces the spec files; the overlay stays as it is."""
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    release = json.loads(COMPANIES.read_text())
    release["info"]["version"] = "v3.1-next"
    release["paths"]["/crm/v3/objects/companies/{companyId}"]["patch"]["summary"] = "Changed"
    (vendor / "companies.json").write_text(json.dumps(release))
    shutil.copy(CONTACTS, vendor / "contacts.json")
    document = load_connector(
        [vendor / "companies.json", vendor / "contacts.json"], overlay=HUBSPOT_OVERLAY
    )
    original = load_connector(HUBSPOT_OVERLAY)
    assert document.sha256 != original.sha256
    assert document.document["info"]["version"] == "v3.1-next"
    assert document.objects.keys() == original.objects.keys()


def test_problem_in_the_overlay_is_reported_in_the_overlay_file(tmp_path):
    overlay = json.loads(HUBSPOT_OVERLAY.read_text())
    sync = overlay["actions"][0]["update"]["x-synchronization"]
    sync["objects"]["Company"]["push"]["create"]["operation"] = "POST /crm/v3/objects/companys"
    overlay["extends"] = str(COMPANIES)
    overlay["x-extends"] = [str(CONTACTS)]
    path = tmp_path / "broken.overlay.json"
    path.write_text(json.dumps(overlay, indent=2))
    document, problems = check_connector(path)
    assert document is None
    (problem,) = [p for p in problems if p.severity == "error"]
    assert problem.file == str(path)
    assert problem.pointer == (
        "/actions/0/update/x-synchronization/objects/Company/push/create/operation"
    )
    assert "unknown operation 'POST /crm/v3/objects/companys'" in problem.message
    lines = path.read_text().splitlines()
    assert "/crm/v3/objects/companys" in lines[problem.line - 1]


def test_problem_in_a_vendor_spec_is_reported_in_that_spec(tmp_path):
    broken = json.loads(CONTACTS.read_text())
    del broken["paths"]["/crm/v3/objects/contacts"]["post"]["responses"]
    contacts = tmp_path / "contacts.json"
    contacts.write_text(json.dumps(broken, indent=2))
    document, problems = check_connector([COMPANIES, contacts], HUBSPOT_OVERLAY)
    assert document is None
    problem = next(p for p in problems if "responses" in p.message)
    assert problem.file == str(contacts)
    assert problem.pointer == "/paths/~1crm~1v3~1objects~1contacts/post"
    assert '"post"' in contacts.read_text().splitlines()[problem.line - 1]


def test_overlay_without_extends_needs_the_specs(tmp_path):
    overlay = json.loads(HUBSPOT_OVERLAY.read_text())
    overlay.pop("extends")
    overlay.pop("x-extends")
    path = tmp_path / "o.json"
    path.write_text(json.dumps(overlay))
    document, problems = check_connector(path)
    assert document is None
    assert any(p.pointer == "/extends" and "names no document" in p.message for p in problems)


@pytest.mark.parametrize("spec", [COMPANIES, CONTACTS])
def test_vendor_specs_as_published_index_every_operation(spec):
    operations = index_operations(json.loads(spec.read_text()))
    keys = {k for k in operations if " /" in k}
    assert len(keys) == 12 if spec == COMPANIES else len(keys) == 13
    assert any("{" in op.operation_id for op in operations.values() if op.operation_id)
