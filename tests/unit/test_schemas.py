"""The contracts under ``schemas/`` and their loader ``shared.schemas``.

Everything here runs offline: a fixture makes any socket connection fail, so a
``$ref`` that would need the network breaks the test instead of fetching.
"""

from __future__ import annotations

import copy
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from openapi_spec_validator import validate as validate_openapi

from shared import schemas
from shared.paths import schemas_dir

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "entities"
SYSTEM_FIELDS = ("id", "organizationId", "createdAt", "updatedAt")

# entity -> {reference field -> entity it points to}; line items are in common.
REFERENCES = {
    "account": {"parentAccountId": "account"},
    "contact": {"accountId": "account"},
    "order": {"accountId": "account", "contactId": "contact"},
    "invoice": {
        "accountId": "account",
        "contactId": "contact",
        "orderId": "order",
        "originalInvoiceId": "invoice",
    },
    "product": {},
    "payment": {"accountId": "account", "invoiceId": "invoice"},
    "case": {"accountId": "account", "contactId": "contact"},
    "subscription": {"accountId": "account", "productId": "product"},
}


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def schema_files() -> list[Path]:
    return sorted(schemas_dir().rglob("*.schema.json"))


def relative_name(path: Path) -> str:
    return path.relative_to(schemas_dir()).as_posix()


def sample(entity: str) -> dict[str, Any]:
    return json.loads((SAMPLES / f"{entity}.json").read_text(encoding="utf-8"))


def errors(name: str, instance: Any) -> list[ValidationError]:
    return list(schemas.validator(name).iter_errors(instance))


def refs(node: Any, base: str) -> Iterator[tuple[str, str]]:
    """Every ``$ref`` under ``node`` with the base URI it resolves against."""
    if isinstance(node, dict):
        if isinstance(node.get("$id"), str):
            base = urljoin(base, node["$id"])
        if isinstance(node.get("$ref"), str):
            yield base, node["$ref"]
        for value in node.values():
            yield from refs(value, base)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value, base)


# --- the schema files themselves -------------------------------------------------


@pytest.mark.parametrize("path", schema_files(), ids=relative_name)
def test_every_schema_file_is_a_valid_draft_2020_12_schema(path: Path) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(document)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["$id"] == schemas.BASE_URI + relative_name(path)


@pytest.mark.parametrize(
    "path",
    [*schema_files(), schemas_dir() / "bss-api.openapi.json"],
    ids=relative_name,
)
def test_every_ref_resolves_offline(path: Path) -> None:
    name = relative_name(path)
    document = schemas.load_schema(name)
    resolver = schemas.registry().resolver()
    found = list(refs(document, schemas.schema_uri(name)))
    assert bool(found) == ('"$ref"' in path.read_text(encoding="utf-8"))
    for base, ref in found:
        resolved = resolver.lookup(urljoin(base, ref))
        assert isinstance(resolved.contents, dict | bool), f"{ref} from {base}"


def test_the_entity_schemas_are_one_per_entity() -> None:
    found = {p.name for p in (schemas_dir() / "entities").glob("*.schema.json")}
    assert found == {f"{e}.schema.json" for e in schemas.ENTITIES} | {"common.schema.json"}


@pytest.mark.parametrize("entity", schemas.ENTITIES)
def test_entity_schema_has_system_fields_custom_values_and_is_closed(entity: str) -> None:
    schema = schemas.entity_schema(entity)
    assert schema["additionalProperties"] is False
    for field in (*SYSTEM_FIELDS, "customValues"):
        assert field in schema["properties"], field
    for field in SYSTEM_FIELDS:
        assert schema["properties"][field]["readOnly"] is True
        assert field not in schema["required"]


@pytest.mark.parametrize("entity", schemas.ENTITIES)
def test_reference_fields_name_the_entity_they_point_to(entity: str) -> None:
    properties = schemas.entity_schema(entity)["properties"]
    annotated = {
        name: spec["x-references"] for name, spec in properties.items() if "x-references" in spec
    }
    assert annotated == REFERENCES[entity]


def test_line_items_reference_products() -> None:
    line = schemas.load_schema("entities/common")["$defs"]["lineItem"]
    assert line["properties"]["productId"]["x-references"] == "product"


# --- entity records ----------------------------------------------------------------


@pytest.mark.parametrize("entity", schemas.ENTITIES)
def test_realistic_record_validates(entity: str) -> None:
    record = sample(entity)
    assert errors(f"entities/{entity}", record) == []


def test_samples_are_filled_in() -> None:
    assert len(sample("account")["addresses"]) == 2
    assert len(sample("invoice")["lines"]) == 3
    assert len(sample("order")["lines"]) == 3


@pytest.mark.parametrize("entity", schemas.ENTITIES)
def test_a_record_to_create_needs_no_system_fields(entity: str) -> None:
    record = {k: v for k, v in sample(entity).items() if k not in SYSTEM_FIELDS}
    assert errors(f"entities/{entity}", record) == []


@pytest.mark.parametrize("entity", schemas.ENTITIES)
def test_every_optional_field_accepts_null(entity: str) -> None:
    schema = schemas.entity_schema(entity)
    record = sample(entity)
    optional = set(schema["properties"]) - set(schema["required"]) - set(SYSTEM_FIELDS)
    record.update(dict.fromkeys(optional))
    assert errors(f"entities/{entity}", record) == []


@pytest.mark.parametrize("entity", schemas.ENTITIES)
def test_unknown_field_is_rejected(entity: str) -> None:
    record = sample(entity)
    record["nonExistentField"] = "mapped by mistake"
    [error] = errors(f"entities/{entity}", record)
    assert error.validator == "additionalProperties"
    assert error.json_path == "$"
    assert "nonExistentField" in error.message


def test_unknown_field_in_a_nested_address_is_rejected() -> None:
    record = sample("account")
    record["addresses"][0]["street"] = "12 rue de la Paix"
    error = best_match(errors("entities/account", record))
    assert error is not None
    assert error.json_path == "$.addresses[0]"
    assert "street" in error.message


def _set(record: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    node: Any = record
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value


@pytest.mark.parametrize(
    ("entity", "path", "value", "json_path"),
    [
        ("invoice", ("lines", 1, "quantity"), "three", "$.lines[1].quantity"),
        ("invoice", ("dueDate",), "15/04/2025", "$.dueDate"),
        ("account", ("addresses", 1, "countryCode"), "France", "$.addresses[1].countryCode"),
        ("account", ("addresses", 0, "isBilling"), "yes", "$.addresses[0].isBilling"),
        ("account", ("currency",), "eur", "$.currency"),
        ("account", ("numberOfEmployees",), 12.5, "$.numberOfEmployees"),
        ("contact", ("birthDate",), "1981-23-06", "$.birthDate"),
        ("contact", ("email",), "claire.moreau", "$.email"),
        ("order", ("total",), "2075.68", "$.total"),
        ("order", ("status",), "shipped", "$.status"),
        ("product", ("billingType",), "subscription", "$.billingType"),
        ("payment", ("amount",), 0, "$.amount"),
        ("payment", ("method",), "bitcoin", "$.method"),
        ("case", ("priority",), "critical", "$.priority"),
        ("case", ("customValues", "circuitId"), {"nested": "object"}, "$.customValues.circuitId"),
        ("subscription", ("renewalDate",), "2026-03-01T00:00:00Z", "$.renewalDate"),
        ("subscription", ("updatedAt",), "yesterday", "$.updatedAt"),
    ],
)
def test_wrong_value_is_rejected_at_its_json_path(
    entity: str, path: tuple[str | int, ...], value: Any, json_path: str
) -> None:
    record = sample(entity)
    _set(record, path, value)
    found = errors(f"entities/{entity}", record)
    assert len(found) == 1, [e.message for e in found]
    # A nullable field wraps its definition in anyOf [definition, null]: best_match
    # descends to the precise error, the one to report.
    error = best_match(found)
    assert error is not None
    assert error.json_path == json_path
    assert json_path.startswith(found[0].json_path)


@pytest.mark.parametrize(
    ("entity", "field"),
    [
        ("account", "name"),
        ("contact", "lastName"),
        ("order", "accountId"),
        ("invoice", "accountId"),
        ("product", "name"),
        ("payment", "amount"),
        ("case", "subject"),
        ("subscription", "productId"),
    ],
)
def test_missing_required_field_is_rejected(entity: str, field: str) -> None:
    record = sample(entity)
    del record[field]
    [error] = errors(f"entities/{entity}", record)
    assert error.validator == "required"
    assert field in error.message


def test_required_reference_may_not_be_null() -> None:
    record = sample("order")
    record["accountId"] = None
    assert [e.json_path for e in errors("entities/order", record)] == ["$.accountId"]


def test_recurring_product_needs_a_billing_period() -> None:
    record = sample("product")
    record["billingPeriod"] = None
    assert [e.json_path for e in errors("entities/product", record)] == ["$.billingPeriod"]
    record["billingType"] = "one_time"
    assert errors("entities/product", record) == []


# --- BSS events ------------------------------------------------------------------

EVENT = {
    "id": "evt_01HV4D7F3A9B2C8E5G6H7J8K9M",
    "entity": "invoice",
    "event": "updated",
    "organizationId": "org-acme-telecom",
    "recordId": "inv_2025_00317",
    "occurredAt": "2025-03-12T09:41:30.118Z",
    "origin": None,
    "changedFields": ["status", "amountPaid", "balance"],
    "data": {"id": "inv_2025_00317", "status": "partially_paid", "balance": 1045.68},
}


def test_realistic_event_validates() -> None:
    assert errors("bss-event", EVENT) == []


def test_event_written_by_bss_sync_carries_its_instance_id() -> None:
    event = {**EVENT, "origin": "hubspot-prod", "event": "created", "changedFields": None}
    assert errors("bss-event", event) == []


def test_event_tolerates_unknown_properties_and_missing_optional_ones() -> None:
    minimal = {k: v for k, v in EVENT.items() if k not in ("origin", "data", "changedFields")}
    assert errors("bss-event", {**minimal, "schemaVersion": 2, "actor": "user:42"}) == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("entity", "Lead Record"),
        ("event", "archived"),
        ("occurredAt", "2025-03-12 09:41"),
        ("organizationId", "org acme"),
        ("origin", ""),
        ("recordId", 317),
    ],
)
def test_bad_event_is_rejected_at_its_json_path(field: str, value: Any) -> None:
    found = errors("bss-event", {**EVENT, field: value})
    assert {e.json_path for e in found} == {f"$.{field}"}


def test_envelope_entities_are_the_canonical_ones_events_may_name_others() -> None:
    message = schemas.load_schema("sync-message")["properties"]["entity"]["enum"]
    assert tuple(message) == schemas.ENTITIES
    event = schemas.load_schema("bss-event")["properties"]["entity"]
    assert tuple(event["examples"]) == schemas.ENTITIES
    assert errors("bss-event", {**EVENT, "entity": "quote"}) == []  # skipped, not refused


# --- BSS API (OpenAPI) ------------------------------------------------------------

OPERATIONS = {
    ("get", "/health"): "health",
    ("get", "/organizations/{orgId}/{entity}"): "listRecords",
    ("post", "/organizations/{orgId}/{entity}"): "createRecord",
    ("get", "/organizations/{orgId}/{entity}/{id}"): "getRecord",
    ("put", "/organizations/{orgId}/{entity}/{id}"): "updateRecord",
    ("patch", "/organizations/{orgId}/{entity}/{id}"): "patchRecord",
    ("delete", "/organizations/{orgId}/{entity}/{id}"): "deleteRecord",
}
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture(scope="module")
def api() -> dict[str, Any]:
    return schemas.load_schema("bss-api.openapi")


def api_schema(name: str) -> Draft202012Validator:
    uri = f"{schemas.schema_uri('bss-api.openapi')}#/components/schemas/{name}"
    return Draft202012Validator(
        {"$ref": uri},
        registry=schemas.registry(),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def test_api_passes_openapi_spec_validator(api: dict[str, Any]) -> None:
    path = schemas_dir() / "bss-api.openapi.json"
    validate_openapi(copy.deepcopy(api), base_uri=path.as_uri())
    assert api["openapi"] == "3.1.0"


def test_api_has_the_expected_operations(api: dict[str, Any]) -> None:
    found = {
        (method, path): operation["operationId"]
        for path, item in api["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    }
    assert found == OPERATIONS


def test_api_entity_parameter_lists_the_canonical_entities(api: dict[str, Any]) -> None:
    parameter = api["components"]["parameters"]["entity"]
    assert tuple(parameter["schema"]["enum"]) == schemas.ENTITIES


def test_every_api_response_ref_resolves(api: dict[str, Any]) -> None:
    resolver = schemas.registry().resolver()
    base = schemas.schema_uri("bss-api.openapi")
    checked = 0
    for item in api["paths"].values():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            for response in operation["responses"].values():
                for ref_base, ref in refs(response, base):
                    resolved = resolver.lookup(urljoin(ref_base, ref))
                    for inner_base, inner in refs(resolved.contents, ref_base):
                        resolver.lookup(urljoin(inner_base, inner))
                    checked += 1
    assert checked > 40


def test_api_record_schemas_point_at_the_entity_schemas(api: dict[str, Any]) -> None:
    components = api["components"]["schemas"]
    for entity in schemas.ENTITIES:
        assert components[entity.capitalize()] == {"$ref": f"entities/{entity}.schema.json"}


def test_api_write_operations_accept_the_sync_origin_header(api: dict[str, Any]) -> None:
    for method, path in OPERATIONS:
        if method in ("post", "put", "patch", "delete"):
            operation = api["paths"][path][method]
            assert {"$ref": "#/components/parameters/X-Sync-Origin"} in operation["parameters"]
    header = api["components"]["parameters"]["X-Sync-Origin"]
    assert header["in"] == "header"


def test_api_errors_are_problem_details(api: dict[str, Any]) -> None:
    for name, response in api["components"]["responses"].items():
        assert list(response["content"]) == ["application/problem+json"], name


def test_api_list_page_of_realistic_records_validates() -> None:
    page = {"items": [sample("invoice"), sample("account")], "nextCursor": "eyJ1IjoiMjAyNSJ9"}
    assert list(api_schema("RecordPage").iter_errors(page)) == []
    assert list(api_schema("RecordPage").iter_errors({"items": [], "nextCursor": None})) == []


def test_api_stored_record_requires_system_fields() -> None:
    record = sample("payment")
    del record["id"]
    assert list(api_schema("StoredRecord").iter_errors(record)) != []
    assert list(api_schema("Record").iter_errors(record)) == []


# --- sync messages (schema owned by the lead) ------------------------------------

PUSH = {
    "id": "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b",
    "direction": "push",
    "org_id": "org-acme-telecom",
    "instance_id": "hubspot-prod",
    "entity": "account",
    "action": "update",
    "record_id": "acc_01HV3K8Q2Z7M4N5P6R7S8T9V0W",
    "run_id": None,
    "trigger": "event",
    "attempt": 0,
    "redeliveries": 0,
    "created_at": "2025-03-02T16:45:04.001Z",
    "correlation_id": "evt_01HV3K9A0B1C2D3E4F5G6H7J8K",
}

PULL = {
    "id": "0b9e8d7c-6b5a-4493-8271-605f4e3d2c1b",
    "direction": "pull",
    "org_id": "org-acme-telecom",
    "instance_id": "hubspot-prod",
    "entity": "account",
    "action": "upsert",
    "record_id": None,
    "external_id": "18417356741",
    "record": {
        "id": "18417356741",
        "properties": {"name": "Contoso Retail", "domain": "contoso.com", "industry": "RETAIL"},
        "updatedAt": "2025-03-02T22:10:41.532Z",
        "archived": False,
    },
    "run_id": "run-2025-03-02-2300-hubspot-prod",
    "trigger": "schedule",
    "attempt": 2,
    "created_at": "2025-03-02T23:00:12Z",
    "correlation_id": "run-2025-03-02-2300-hubspot-prod",
}


def test_realistic_push_and_pull_messages_validate() -> None:
    assert errors("sync-message", PUSH) == []
    assert errors("sync-message", PULL) == []


def test_pull_message_without_external_id_is_rejected() -> None:
    message = {k: v for k, v in PULL.items() if k != "external_id"}
    found = errors("sync-message", message)
    assert found
    assert any(e.validator == "required" and "external_id" in e.message for e in found)


def test_push_message_without_record_id_is_rejected() -> None:
    message = {k: v for k, v in PUSH.items() if k != "record_id"}
    assert any("record_id" in e.message for e in errors("sync-message", message))


# --- the loader ------------------------------------------------------------------


def test_load_schema_is_cached_and_accepts_names_with_or_without_suffix() -> None:
    first = schemas.load_schema("entities/account")
    assert schemas.load_schema("entities/account") is first
    assert schemas.load_schema("entities/account.schema.json") is first
    assert schemas.entity_schema("account") is first


def test_validator_is_cached() -> None:
    assert schemas.validator("bss-event") is schemas.validator("bss-event")


def test_unknown_entity_raises_key_error_naming_the_known_ones() -> None:
    with pytest.raises(KeyError, match=r"unknown entity 'lead'.*account, contact"):
        schemas.entity_schema("lead")


@pytest.mark.parametrize("name", ["no-such-schema", "../pyproject", "/etc/passwd", ""])
def test_unknown_or_escaping_schema_name_raises_file_not_found(name: str) -> None:
    with pytest.raises(FileNotFoundError):
        schemas.load_schema(name)


def test_registry_holds_every_document_by_id() -> None:
    registry = schemas.registry()
    for path in schema_files():
        document = json.loads(path.read_text(encoding="utf-8"))
        assert registry.contents(document["$id"]) == document
    assert "paths" in registry.contents(schemas.schema_uri("bss-api.openapi"))


def test_schemas_dir_override_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "thing.schema.json").write_text(
        json.dumps(
            {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "$id": "https://bss-sync.dev/schemas/thing.schema.json",
                "type": "object",
                "properties": {"n": {"type": "integer"}},
            }
        ),
        encoding="utf-8",
    )
    monkeypatch.setenv("BSS_SYNC_SCHEMAS", str(tmp_path))
    assert schemas.load_schema("thing")["properties"]["n"] == {"type": "integer"}
    assert [e.json_path for e in schemas.validator("thing").iter_errors({"n": "x"})] == ["$.n"]
    with pytest.raises(FileNotFoundError):
        schemas.load_schema("bss-event")


def test_what_the_sandbox_keeps_per_entity_covers_every_entity_once() -> None:
    """Its seeding order and id prefixes are per-entity data: a new entity needs both."""
    from sandbox.records import ID_PREFIXES
    from sandbox.seed import SEED_ORDER

    assert sorted(SEED_ORDER) == sorted(schemas.ENTITIES)
    assert sorted(ID_PREFIXES) == sorted(schemas.ENTITIES)


# -- the quick validator (jsonschema-rs) is never more lenient than jsonschema ---------

TRICKY_VALUES: tuple[Any, ...] = (
    None, True, 0, -1, 1.5, 10**20, "", "x", " ", "x" * 300, [], [{}], {}, {"a": 1},
    # dates and times at the edges of RFC 3339 / ISO 8601
    "2024-02-30", "2024-1-01", "20240101", "2024-01-01T00:00:00", "2024-01-01t00:00:00z",
    "2024-01-01T24:00:00Z", "2024-01-01T23:59:60Z", "2024-01-01 00:00:00Z",
    "2024-01-01T00:00:00+0100", "2024-01-01T00:00:00.123456789+01:00", "2024-01-01\n",
    "2024-01-01T00:00:00Z\n", "\uff12\uff10\uff12\uff14-01-01",  # full-width digits
    # e-mail addresses and short codes
    "a@b", "@", "a@", "@b", "a b@c.example", "a@b.example\n", "a@@b.example",
    "FR", "FR\n", "fr", "FRA", "EUR\n", "É", "en-GB", "en_GB", "plan/basic", "plan//x",
)


def _leaf_paths(node: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, key)
            yield from _leaf_paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*path, index)
            yield from _leaf_paths(value, (*path, index))


def _mutations(record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every field of ``record`` (nested ones too) set to each tricky value, removed,
    and joined by an unknown sibling."""
    for path in _leaf_paths(record):
        for value in TRICKY_VALUES:
            changed = copy.deepcopy(record)
            _set(changed, path, value)
            yield changed
        parent = copy.deepcopy(record)
        node: Any = parent
        for step in path[:-1]:
            node = node[step]
        if isinstance(node, dict):
            del node[path[-1]]
            yield parent
            sibling = copy.deepcopy(parent)
            _set(sibling, (*path[:-1], "notAField"), 1)
            yield sibling


@pytest.mark.parametrize("entity", schemas.ENTITIES)
def test_the_quick_validator_never_accepts_what_jsonschema_refuses(entity: str) -> None:
    validator = schemas.validator(f"entities/{entity}")
    assert type(validator.quick).__module__.startswith("jsonschema_rs"), \
        "SCHEMA_CHECKS=fast: the entity schemas are checked by jsonschema-rs first"
    refused = 0
    more_lenient = []
    for document in _mutations(sample(entity)):
        if not validator.quick.is_valid(document):
            refused += 1  # jsonschema decides and words it: nothing to compare
        elif not validator.checker.is_valid(document):
            more_lenient.append(document)
    assert not more_lenient, f"jsonschema-rs accepts what jsonschema refuses: {more_lenient[:3]}"
    assert refused > 100  # the mutations do reach the rules
