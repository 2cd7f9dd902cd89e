"""External ``$ref``s (tests/data/vendor/refs/): a vendor spec split over files, referenced
by published URLs, by a path beside the spec and by a JSON Schema's ``$id``, resolves to
the files given (by file name, ``$id`` or ``--ref URL=FILE``), never fetched; the overlay's
``extends`` URL is matched the same way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from shared.cli.main import main
from shared.connector import check_connector
from shared.connector.external_refs import external_refs
from shared.connector.payloads import PayloadChecker
from shared.connector.preview import preview_push
from shared.installation import validate
from shared.installation.connectors import load_connectors

ROOT = Path(__file__).resolve().parents[2]
REFS = ROOT / "tests" / "data" / "vendor" / "refs"
SPEC = REFS / "customers.yaml"
COMMON = REFS / "common.yaml"
NOTE = REFS / "note.schema.json"
ERRORS = REFS / "errors.yaml"
OVERLAY = REFS / "customers.overlay.yaml"
ACCOUNT = ROOT / "tests" / "data" / "entities" / "account.json"
ERRORS_URL = "https://partners.crmly.test/v2/errors"
SPEC_URL = "https://api.crmly.test/openapi/customers.yaml"
BODY = "/paths/~1customers/post/requestBody/content/application~1json/schema/$ref"


def load(*files: Path, refs: dict | None = None, overlay: Path | None = OVERLAY, **kw):
    refs = {ERRORS_URL: ERRORS} if refs is None else refs
    return check_connector(list(files), overlay, refs=refs, **kw)


def line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_references_resolve_to_the_files_given_by_name_id_and_mapping():
    document, problems = load(SPEC, COMMON, NOTE)
    assert document is not None, [p.format() for p in problems]
    assert document.sources == (str(SPEC), str(OVERLAY)), "common and note are referenced"
    schemas = document.document["components"]["schemas"]
    customer = schemas["Customer"]  # by file name (the published URL's common.yaml)
    assert customer["properties"]["billing_address"] == {"$ref": "#/components/schemas/Address"}
    assert customer["properties"]["note"] == {"$ref": "#/components/schemas/Note"}  # by $id
    assert schemas["Note"]["properties"]["text"]["maxLength"] == 200
    assert "$id" not in schemas["Note"] and "$schema" not in schemas["Note"]
    assert schemas["Error"]["properties"]["code"] == {"type": "integer"}  # by --ref
    operation = document.operations["createCustomer"]
    assert operation.raw["parameters"] == [{"$ref": "#/components/parameters/Locale"}]
    # beside the spec (a relative path): read without being given
    assert document.document["components"]["responses"]["CustomerCreated"]["description"] \
        == "Created"
    # only the unreached operation's reference stays, as a warning
    (warning,) = problems
    assert warning.severity == "warning"
    assert (warning.file, warning.line) == (str(SPEC), line_of(SPEC, "report.yaml#/Report"))


def test_the_external_schemas_check_what_is_sent():
    document, _ = load(SPEC, COMMON, NOTE)
    account = json.loads(ACCOUNT.read_text())
    preview = preview_push(document, document.objects["Customer"], account, "create")
    assert preview.errors == [
        "push create: Customer (account): body breaks the request schema of POST /customers "
        "at /name: 'Northwind Logistics' is too long"
    ]
    checker = PayloadChecker(document)
    assert checker.request_errors(document.operations["createCustomer"], {
        "name": "Northwind", "billing_address": {"country": "FRA"}, "note": {"text": 5},
    }) == ["at /billing_address/country: 'FRA' is too long",
           "at /note/text: 5 is not of type 'string'"]


def test_a_map_target_only_an_external_schema_has_is_known():
    spec = yaml.safe_load(OVERLAY.read_text())
    transform = spec["actions"][0]["update"]["x-synchronization"]["transforms"]
    transform["AccountToCustomer"]["map"]["note.colour"] = "'red'"
    path = REFS.parent / "refs-colour.overlay.yaml"
    try:
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        document, problems = load(SPEC, COMMON, NOTE, overlay=path)
    finally:
        path.unlink()
    assert document is None
    assert [p.message for p in problems if p.severity == "error"] == [
        "target field 'note.colour' is not in the request schema of POST /customers"]


def test_an_unresolved_reference_names_the_option_that_fixes_it():
    document, problems = load(SPEC, NOTE, refs={})
    assert document is None
    errors = {p.pointer: p for p in problems if p.severity == "error"}
    body = errors[BODY]
    assert (body.file, body.line) == (str(SPEC), line_of(SPEC, "common.yaml#/components/schemas"))
    assert body.message == (
        "$ref 'https://api.crmly.test/schemas/common.yaml#/components/schemas/Customer': "
        "https://api.crmly.test/schemas/common.yaml is another document, which bss-sync "
        "does not fetch: give common.yaml with the spec(s), or map it with "
        "--ref https://api.crmly.test/schemas/common.yaml=FILE")
    default = errors["/paths/~1customers/post/responses/default/content/application~1json/"
                     "schema/$ref"]
    assert default.message.endswith(f"or map it with --ref {ERRORS_URL}=FILE")


def test_an_unreached_unresolved_reference_is_a_warning_and_strict_an_error():
    _, problems = load(SPEC, COMMON, NOTE)
    assert [p.severity for p in problems] == ["warning"]
    document, problems = load(SPEC, COMMON, NOTE, strict=True)
    assert document is None
    assert [p.severity for p in problems] == ["error"]


def test_a_problem_in_a_referenced_file_is_located_there(tmp_path):
    for file in (SPEC, NOTE, ERRORS, OVERLAY):
        shutil.copy(file, tmp_path)
    common = yaml.safe_load(COMMON.read_text())
    common["components"]["schemas"]["Address"]["properties"]["city"]["default"] = 75
    (tmp_path / "common.yaml").write_text(yaml.safe_dump(common, sort_keys=False))
    document, problems = check_connector(
        [tmp_path / "customers.yaml", tmp_path / "common.yaml", tmp_path / "note.schema.json"],
        tmp_path / "customers.overlay.yaml", refs={ERRORS_URL: tmp_path / "errors.yaml"})
    assert document is None
    errors = [p for p in problems if p.severity == "error"]
    assert len(errors) == 1, [p.format() for p in problems]
    (problem,) = errors
    assert problem.file.endswith("common.yaml")
    assert problem.pointer == "/components/schemas/Address/properties/city/default"
    assert problem.line == line_of(tmp_path / "common.yaml", "default: 75")
    assert problem.message == "OpenAPI: the default 75 is not of type 'string'"


def test_two_given_files_of_the_same_name_must_be_told_apart(tmp_path):
    other = tmp_path / "common.yaml"
    other.write_text(COMMON.read_text())
    document, problems = load(SPEC, COMMON, other, NOTE)
    assert document is None
    (problem,) = [p for p in problems if p.pointer == BODY]
    assert problem.message.endswith(
        f"common.yaml could be any of {COMMON}, {other}: say which with "
        "--ref https://api.crmly.test/schemas/common.yaml=FILE")
    url = "https://api.crmly.test/schemas/common.yaml"
    document, problems = load(SPEC, COMMON, other, NOTE, refs={ERRORS_URL: ERRORS, url: other})
    assert document is not None, [p.format() for p in problems]


def test_the_overlays_extends_url_is_matched_to_a_file_given_never_fetched():
    document, problems = check_connector(OVERLAY, refs={ERRORS_URL: ERRORS, SPEC_URL: SPEC},
                                         ref_files=[COMMON, NOTE])
    assert document is not None, [p.format() for p in problems]
    assert document.sources == (str(SPEC), str(OVERLAY))
    # by file name, the spec given after the file that only it references
    document, _ = load(NOTE, COMMON, SPEC)
    assert document is not None and document.sources[0] == str(SPEC)
    _, problems = check_connector(OVERLAY)
    (problem,) = problems
    assert problem.pointer == "/extends"
    assert problem.message.endswith("; or map it to its file with --ref URL=FILE")


def test_the_extends_spec_leads_whatever_the_order_given(tmp_path):
    second = yaml.safe_load(SPEC.read_text())
    second["info"]["title"] = "Other"
    second["servers"] = [{"url": "https://other.crmly.test"}]
    second["paths"] = {"/other": second["paths"].pop("/reports")}
    second["paths"]["/other"]["get"]["operationId"] = "other"
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(second, sort_keys=False))
    document, problems = load(path, SPEC, COMMON, NOTE)
    assert document is not None, [p.format() for p in problems]
    assert document.document["servers"] == [{"url": "https://api.crmly.test/v2"}]


def test_cli_ref_option_and_referenced_files_given_alongside(capsys):
    args = [str(SPEC), str(COMMON), str(NOTE), "--overlay", str(OVERLAY)]
    assert main(["validate", *args]) == 1
    assert f"--ref {ERRORS_URL}=FILE" in capsys.readouterr().err
    assert main(["validate", *args, "--ref", f"{ERRORS_URL}={ERRORS}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{SPEC} + {COMMON} + {NOTE} + {OVERLAY}: OK")


def test_cli_bundle_writes_one_self_contained_document(tmp_path):
    out = tmp_path / "bundle.json"
    assert main(["bundle", str(SPEC), str(COMMON), str(NOTE), "--overlay", str(OVERLAY),
                 "--ref", f"{ERRORS_URL}={ERRORS}", "-o", str(out)]) == 0
    bundle = json.loads(out.read_text())
    left = [node["$ref"] for _, node in external_refs(bundle)]
    assert left == ["https://reports.crmly.test/report.yaml#/Report"]  # unreached: warned


def test_cli_without_overlay_a_referenced_file_is_not_a_connector(tmp_path, capsys):
    spec = yaml.safe_load(SPEC.read_text())
    spec.update(yaml.safe_load(OVERLAY.read_text())["actions"][0]["update"])
    spec["paths"]["/customers"]["post"]["responses"]["default"]["content"][
        "application/json"]["schema"]["$ref"] = "errors.yaml#/Error"
    connector = tmp_path / "crmly.yaml"
    connector.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert main(["validate", str(connector), str(COMMON), str(NOTE), str(ERRORS)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"{connector}: OK — Crmly Customers 2 — OpenAPI 3.0.3, 1 object(s): "
        f"Customer(account, push); 1 transform(s), sha256 "
        f"{captured.out.split('sha256 ')[1].strip()}"]


@pytest.mark.parametrize("mapping", ["no-equals", "=file.yaml", "https://x="])
def test_cli_ref_takes_url_equals_file(mapping, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["validate", str(SPEC), "--ref", mapping])
    assert exit_.value.code == 2
    assert "expected URL=FILE" in capsys.readouterr().err


def installation(tmp_path: Path, refs: dict[str, str] | None) -> tuple[dict, Path]:
    for file in (SPEC, COMMON, NOTE, ERRORS, OVERLAY):
        shutil.copy(file, tmp_path)
    entry = {"id": "crmly", "spec": ["customers.yaml", "common.yaml", "note.schema.json"],
             "overlay": "customers.overlay.yaml", **({"refs": refs} if refs else {})}
    path = tmp_path / "installation.json"
    data = {"connectors": [entry]}
    path.write_text(json.dumps(data, indent=2))
    return data, path


def test_an_installation_files_connector_maps_urls_with_refs(tmp_path):
    data, path = installation(tmp_path, {ERRORS_URL: "errors.yaml"})
    loaded, problems = load_connectors(data, path, lambda pointer: 7)
    assert problems == []
    assert loaded["crmly"].document["components"]["schemas"]["Error"]["type"] == "object"
    assert [p.format() for p in validate(data, lambda _p: None, "x.json")
            if p.pointer.startswith("/connectors")] == []  # the schema takes refs

    data, path = installation(tmp_path, None)
    loaded, problems = load_connectors(data, path, lambda pointer: 7)
    assert loaded == {}
    (problem,) = problems
    assert problem.message.endswith(
        f'or map it with "refs": {{"{ERRORS_URL}": FILE}} in /connectors/0')

    data, path = installation(tmp_path, {ERRORS_URL: "missing.yaml"})
    _, problems = load_connectors(data, path, lambda pointer: 7)
    assert [(p.pointer, p.message) for p in problems] == [
        (f"/connectors/0/refs/{ERRORS_URL.replace('/', '~1')}",
         f"file {tmp_path / 'missing.yaml'} does not exist")]


def test_a_referenced_spec_with_paths_is_still_merged_and_a_self_reference_is_local(tmp_path):
    spec = yaml.safe_load(SPEC.read_text())
    # the vendor's other spec borrows this one's Customer by its published URL
    other = {"openapi": "3.0.3", "info": {"title": "Crmly Orders", "version": "2"},
             "paths": {"/orders": {"get": {"operationId": "listOrders", "responses": {
                 "200": {"description": "ok", "content": {"application/json": {"schema": {
                     "$ref": f"{SPEC_URL}#/components/schemas/Order"}}}}}}}}}
    spec["components"] = {"schemas": {"Order": {"type": "object", "properties": {
        "customer": {"$ref": f"{SPEC_URL}#/components/schemas/Owner"}}},
        "Owner": {"type": "string"}}}
    (tmp_path / "customers.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (tmp_path / "orders.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    document, problems = load(tmp_path / "customers.yaml", tmp_path / "orders.yaml", COMMON,
                              NOTE)
    assert document is not None, [p.format() for p in problems]
    assert {"/customers", "/orders", "/reports"} <= set(document.document["paths"])
    schemas = document.document["components"]["schemas"]
    assert schemas["Order"]["properties"]["customer"] == {"$ref": "#/components/schemas/Owner"}
    assert document.document["paths"]["/orders"]["get"]["responses"]["200"]["content"][
        "application/json"]["schema"] == {"$ref": "#/components/schemas/Order"}
    assert not [name for name in schemas if name.startswith("Customers")], "no copies"


def test_odd_references_are_located_problems_and_a_long_chain_resolves(tmp_path):
    length = 1500  # deeper than Python's recursion limit if each hop recursed
    chain = {"components": {"schemas": {
        f"S{i}": {"type": "object", "properties": {"next": {
            "$ref": f"#/components/schemas/S{i + 1}"}}} for i in range(length)}}}
    chain["components"]["schemas"][f"S{length}"] = {"type": "string"}
    (tmp_path / "chain.json").write_text(json.dumps(chain))
    shutil.copy(COMMON, tmp_path)  # beside the spec, as its relative references say
    odd = {"a": "http://[bad/x.json", "b": "", "c": "chain.json#anchor", "d": "chain.json#/no"}
    spec = yaml.safe_load(SPEC.read_text())
    spec["paths"]["/customers"]["post"]["requestBody"]["content"]["application/json"][
        "schema"] = {"$ref": "chain.json#/components/schemas/S0"}
    spec["paths"]["/reports"]["get"]["responses"][200]["content"]["application/json"][
        "schema"] = {"properties": {k: {"$ref": v} for k, v in odd.items()}}
    path = tmp_path / "customers.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    overlay = yaml.safe_load(OVERLAY.read_text())
    overlay["actions"][0]["update"]["x-synchronization"]["transforms"]["AccountToCustomer"][
        "map"] = {"next.next.next": "name"}
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    document, problems = check_connector([path], tmp_path / "o.yaml",
                                         refs={ERRORS_URL: ERRORS}, ref_files=[NOTE])
    assert document is not None, [p.format() for p in problems]
    schemas = document.document["components"]["schemas"]
    assert schemas[f"S{length}"] == {"type": "string"}
    messages = {p.pointer.split("/")[-2]: p.message for p in problems}
    assert {p.severity for p in problems} == {"warning"}
    assert messages == {
        "a": "$ref 'http://[bad/x.json': not a URL (Invalid IPv6 URL)",
        "b": "$ref '': it names no document",
        "c": "$ref 'chain.json#anchor': the part after # is not a JSON pointer (an anchor)",
        "d": f"$ref 'chain.json#/no' points at nothing in {tmp_path / 'chain.json'}",
    }
