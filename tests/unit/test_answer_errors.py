"""``errorPointer`` / ``errorWhen``: which answers below 400 are errors, and a connector
declaring them wrong is told where."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shared.connector import check_connector
from shared.connector.answer_errors import AnswerErrorRule
from shared.transform.transform import compile_expression

INVOICING = Path(__file__).resolve().parents[2] / "tests" / "data" / "vendor" / "invoicing.yaml"
CREATE = "/x-synchronization/objects/Customer/push/create"


@pytest.mark.parametrize(
    ("body", "found"),
    [
        ({"error": "locked"}, "locked"),
        ({"error": {"code": 7, "text": "locked"}}, '{"code":7,"text":"locked"}'),
        ({"error": 1002}, "1002"),
        ({"error": 0}, None),  # Zoho-style: code 0 is success
        ({"error": None}, None), ({"error": ""}, None), ({"error": False}, None),
        ({"error": []}, None), ({"error": {}}, None), ({}, None), (None, None), ([1], None),
    ],
)
def test_a_pointer_alone_finds_an_error_where_a_value_is(body, found):
    assert AnswerErrorRule(pointer="/error").failure(body) == found


def test_when_decides_and_the_pointer_words_it():
    rule = AnswerErrorRule(pointer="/message", when=compile_expression("success = false"))
    assert rule.failure({"success": False, "message": "no such plan"}) == "no such plan"
    assert rule.failure({"success": False}) == "", "an error that says nothing more"
    assert rule.failure({"success": True, "message": "created"}) is None
    assert rule.failure({}) is None


def test_a_connector_declaring_them_wrong_is_told_where(tmp_path):
    spec = yaml.safe_load(INVOICING.read_text())
    create = spec["x-synchronization"]["objects"]["Customer"]["push"]["create"]
    create["errorWhen"] = "code >"
    create["errorPointer"] = "message"
    path = tmp_path / "invoicing.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    document, problems = check_connector(path)
    assert document is None
    pointers = {p.pointer for p in problems if p.severity == "error"}
    assert pointers == {f"{CREATE}/errorWhen", f"{CREATE}/errorPointer"}
