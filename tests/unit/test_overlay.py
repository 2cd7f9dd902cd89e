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
from shared.installation import load_installation
from tests.fixtures.vendor_specs import VendorSpecs

ROOT = Path(__file__).resolve().parents[2]
HUBSPOT_OVERLAY = ROOT / "connectors" / "hubspot-crm.overlay.json"
# Two small published specs of our own and an overlay extending their URLs: the shape
# of the HubSpot connector, without needing HubSpot's text.
DATA = ROOT / "tests" / "data" / "overlay"
WIDGETS = DATA / "widgets.json"
GADGETS = DATA / "gadgets.json"
WIDGETS_OVERLAY = DATA / "widgets.overlay.json"


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


# -- published specs given as files, the overlay naming their URLs ---------------------


def test_specs_given_as_files_before_the_overlay_make_one_connector():
    document = load_connector([WIDGETS, GADGETS], overlay=WIDGETS_OVERLAY)
    assert set(document.objects) == {"Widget", "Gadget"}
    assert document.sources == (str(WIDGETS), str(GADGETS), str(WIDGETS_OVERLAY))
    create = document.objects["Gadget"].push["create"].operation
    ref = create.raw["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/GadgetsInput", "the second spec's Input, renamed"


def test_an_overlay_alone_extending_urls_says_how_to_give_the_files():
    document, problems = check_connector(WIDGETS_OVERLAY)
    assert document is None
    (problem,) = problems
    assert (problem.file, problem.pointer) == (str(WIDGETS_OVERLAY), "/extends")
    assert '"extends"' in WIDGETS_OVERLAY.read_text().splitlines()[problem.line - 1]
    assert problem.message == (
        "bss-sync does not fetch https://specs.widgets.example/v1/widgets.json and "
        "https://specs.widgets.example/v1/gadgets.json: download them and give the files "
        f"before --overlay (bss-sync validate widgets.json gadgets.json --overlay "
        f"{WIDGETS_OVERLAY}); or map each to its file with --ref URL=FILE"
    )


def test_the_hubspot_overlay_alone_names_hubspots_published_specs():
    _, problems = check_connector(HUBSPOT_OVERLAY, command="bss-sync bundle")
    (problem,) = problems
    published = "https://raw.githubusercontent.com/HubSpot/HubSpot-public-api-spec-collection/main"
    assert problem.pointer == "/extends"
    assert problem.message.startswith(
        f"bss-sync does not fetch {published}/PublicApiSpecs/CRM/Companies/Rollouts/424/v3/"
        f"companies.json and {published}/PublicApiSpecs/CRM/Contacts/Rollouts/424/v3/"
        "contacts.json: download them"
    )
    assert problem.message.endswith(
        f"(bss-sync bundle companies.json contacts.json --overlay {HUBSPOT_OVERLAY}); "
        "or map each to its file with --ref URL=FILE"
    )


def test_an_overlay_alone_extending_a_missing_file_says_so_where_it_is_named(tmp_path):
    overlay = json.loads(WIDGETS_OVERLAY.read_text())
    overlay["extends"] = str(WIDGETS)
    overlay["x-extends"] = ["specs/gadgets.json"]
    path = tmp_path / "o.overlay.json"
    path.write_text(json.dumps(overlay, indent=2))
    _, problems = check_connector(path)
    (problem,) = problems
    assert (problem.file, problem.pointer) == (str(path), "/x-extends/0")
    assert problem.message == (
        f"{tmp_path / 'specs' / 'gadgets.json'} is not a file: give the files before "
        f"--overlay (bss-sync validate {WIDGETS} gadgets.json --overlay {path})"
    )


def test_an_overlay_alone_extending_local_files_is_the_same_connector(tmp_path):
    shutil.copy(WIDGETS, tmp_path / "widgets.json")
    overlay = json.loads(WIDGETS_OVERLAY.read_text())
    overlay["extends"] = "widgets.json"  # relative to the overlay
    overlay["x-extends"] = [GADGETS.as_uri()]
    path = tmp_path / "local.overlay.json"
    path.write_text(json.dumps(overlay, indent=2))
    alone = load_connector(path)
    explicit = load_connector([WIDGETS, GADGETS], overlay=WIDGETS_OVERLAY)
    assert alone.sources[:2] == (str(tmp_path / "widgets.json"), str(GADGETS))
    assert alone.sha256 == explicit.sha256


def test_an_installation_file_gives_the_specs_and_the_overlay(tmp_path):
    """``bss-sync apply`` loads a connector as the command line does: the overlay's
    URLs are not followed, the files named in ``spec`` are the specs."""
    installation = tmp_path / "installation.json"
    installation.write_text(json.dumps({"connectors": [{
        "id": "widgets",
        "spec": [str(WIDGETS.relative_to(ROOT)), str(GADGETS.relative_to(ROOT))],
        "overlay": str(WIDGETS_OVERLAY.relative_to(ROOT)),
    }]}))
    shutil.copytree(DATA, tmp_path / DATA.relative_to(ROOT))
    (connector,) = load_installation(installation).connectors
    expected = load_connector([WIDGETS, GADGETS], overlay=WIDGETS_OVERLAY)
    assert (connector.id, connector.sha256) == ("widgets", expected.sha256)
    assert connector.sources == {
        "spec": ["tests/data/overlay/widgets.json", "tests/data/overlay/gadgets.json"],
        "overlay": "tests/data/overlay/widgets.overlay.json",
    }


def test_vendor_release_is_a_file_swap(tmp_path):
    """A new vendor release replaces the spec files; the overlay stays as it is."""
    release = json.loads(WIDGETS.read_text())
    release["info"]["version"] = "2-next"
    release["paths"]["/widgets/{id}"]["patch"]["summary"] = "Changed"
    (tmp_path / "widgets.json").write_text(json.dumps(release))
    document = load_connector([tmp_path / "widgets.json", GADGETS], overlay=WIDGETS_OVERLAY)
    original = load_connector([WIDGETS, GADGETS], overlay=WIDGETS_OVERLAY)
    assert document.sha256 != original.sha256
    assert document.document["info"]["version"] == "2-next"
    assert document.objects.keys() == original.objects.keys()


def test_problem_in_the_overlay_is_reported_in_the_overlay_file(tmp_path):
    overlay = json.loads(WIDGETS_OVERLAY.read_text())
    sync = overlay["actions"][0]["update"]["x-synchronization"]
    sync["objects"]["Widget"]["push"]["create"]["operation"] = "POST /widgetz"
    path = tmp_path / "broken.overlay.json"
    path.write_text(json.dumps(overlay, indent=2))
    document, problems = check_connector([WIDGETS, GADGETS], path)
    assert document is None
    (problem,) = [p for p in problems if p.severity == "error"]
    assert problem.file == str(path)
    assert problem.pointer == (
        "/actions/0/update/x-synchronization/objects/Widget/push/create/operation"
    )
    assert "unknown operation 'POST /widgetz'" in problem.message
    lines = path.read_text().splitlines()
    assert "/widgetz" in lines[problem.line - 1]


def test_problem_in_a_vendor_spec_is_reported_in_that_spec(tmp_path):
    broken = json.loads(GADGETS.read_text())
    del broken["paths"]["/gadgets"]["post"]["responses"]
    gadgets = tmp_path / "gadgets.json"
    gadgets.write_text(json.dumps(broken, indent=2))
    document, problems = check_connector([WIDGETS, gadgets], WIDGETS_OVERLAY)
    assert document is None
    problem = next(p for p in problems if "responses" in p.message)
    assert problem.file == str(gadgets)
    assert problem.pointer == "/paths/~1gadgets/post"
    assert '"post"' in gadgets.read_text().splitlines()[problem.line - 1]


def test_overlay_without_extends_needs_the_specs(tmp_path):
    overlay = json.loads(WIDGETS_OVERLAY.read_text())
    overlay.pop("extends")
    overlay.pop("x-extends")
    path = tmp_path / "o.json"
    path.write_text(json.dumps(overlay))
    document, problems = check_connector(path)
    assert document is None
    assert any(p.pointer == "/extends" and "names no document" in p.message for p in problems)


# -- the HubSpot connector, from HubSpot's published specs (VENDOR_SPECS) ----------------


def test_hubspot_overlay_validates_against_the_published_specs(vendor_specs: VendorSpecs):
    document, problems = check_connector(vendor_specs.files, HUBSPOT_OVERLAY)
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


@pytest.mark.parametrize(("name", "count"), [("companies", 12), ("contacts", 13)])
def test_vendor_specs_as_published_index_every_operation(
    vendor_specs: VendorSpecs, name: str, count: int
):
    spec = vendor_specs.companies if name == "companies" else vendor_specs.contacts
    operations = index_operations(json.loads(spec.read_text()))
    keys = {k for k in operations if " /" in k}
    assert len(keys) == count
    assert any("{" in op.operation_id for op in operations.values() if op.operation_id)
