"""Checks that tell the truth about vendors' schemas (tests/data/vendor/tickets.yaml): a
value failing a nullable field is told what the non-null schema wants, not that it is
not null; an explicit ``additionalProperties: true`` lets any mapped key through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from shared.connector import check_connector, load_connector
from shared.connector.payloads import PayloadChecker
from shared.connector.preview import preview_push
from shared.transform import TransformContext

ROOT = Path(__file__).resolve().parents[2]
TICKETS = ROOT / "tests" / "data" / "vendor" / "tickets.yaml"
CASE = ROOT / "tests" / "data" / "entities" / "case.json"
MAP = "/x-synchronization/transforms/CaseToTicket/map"


def as_31(document: dict) -> dict:
    """The same API written as OpenAPI 3.1 writes nullable fields."""
    document["openapi"] = "3.1.0"
    ticket = document["components"]["schemas"]["Ticket"]["properties"]
    ticket["reference"] = {"type": ["string", "null"], "maxLength": 8}
    ticket["priority"]["anyOf"][1] = {"type": "null"}
    return document


def write(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "tickets.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture(params=["3.0", "3.1"])
def tickets(request, tmp_path):
    if request.param == "3.0":
        return load_connector(TICKETS)
    return load_connector(write(tmp_path, as_31(yaml.safe_load(TICKETS.read_text()))))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"reference": "CS-005521"}, "at /reference: 'CS-005521' is too long"),
        ({"reference": 5521}, "at /reference: 5521 is not of type 'string'"),
        ({"priority": 9}, "at /priority: 9 is greater than the maximum of 4"),
        ({"priority": "urgent"}, "at /priority: 'urgent' is not of type 'integer'"),
    ],
)
def test_a_value_failing_a_nullable_field_gets_the_non_null_schemas_error(
    tickets, body, expected
):
    checker = PayloadChecker(tickets)
    errors = checker.request_errors(tickets.operations["createTicket"],
                                    {"subject": "s", **body})
    assert errors == [expected]
    assert checker.request_errors(tickets.operations["createTicket"],
                                  {"subject": "s", "reference": None, "priority": None}) == []


def test_preview_says_what_the_vendor_wants(tickets):
    case = json.loads(CASE.read_text())
    preview = preview_push(tickets, tickets.objects["Ticket"], case, "create")
    assert preview.errors == [
        "push create: Ticket (case): body breaks the request schema of POST /tickets "
        "at /reference: 'CS-005521' is too long"
    ]


def test_explicit_additional_properties_true_lets_any_mapped_key_through(tmp_path):
    document, problems = check_connector(TICKETS)
    assert document is not None, [p.format() for p in problems]
    case = json.loads(CASE.read_text())
    context = TransformContext(lookups=document.lookups)
    assert document.transforms["CaseToTicket"].apply(case, context)["custom_fields"] == {
        "source": "bss", "bss_status": "pending", "sla": {"level": 2}}

    for closed in ("absent", False):
        spec = yaml.safe_load(TICKETS.read_text())
        fields = spec["components"]["schemas"]["Ticket"]["properties"]["custom_fields"]
        if closed == "absent":
            del fields["additionalProperties"]
        else:
            fields["additionalProperties"] = False
        document, problems = check_connector(write(tmp_path, spec))
        assert document is None
        assert {(p.pointer, p.message) for p in problems if p.severity == "error"} == {
            (f"{MAP}/custom_fields.bss_status", "target field 'custom_fields.bss_status' "
             "is not in the request schema of POST /tickets"),
            (f"{MAP}/custom_fields.sla.level", "target field 'custom_fields.sla.level' "
             "is not in the request schema of POST /tickets"),
        }

