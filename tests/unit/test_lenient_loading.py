"""A vendor spec with defects in parts the connector does not use still loads: those
are warnings, each at its real JSON pointer and line; in the parts the connector reaches
they stay errors; ``--strict`` makes every problem an error. The spec is made on the spot
(tests/fixtures/vendor_spec_maker.py): 2 MB, 300 defects of 8 kinds."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest

from shared.cli.main import main
from shared.connector import check_connector
from tests.fixtures.vendor_spec_maker import DEFECT_KINDS, defective_spec

DEFECTS = 300


@pytest.fixture(scope="module")
def spec() -> dict:
    return defective_spec(2_000_000, DEFECTS)


@pytest.fixture(scope="module")
def spec_file(spec, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lenient") / "everything.json"
    path.write_text(json.dumps(spec, indent=2))
    return path


def written(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "everything.json"
    path.write_text(json.dumps(document, indent=2))
    return path


def test_defects_outside_what_the_connector_reaches_are_located_warnings(spec_file):
    assert spec_file.stat().st_size >= 2_000_000
    document, problems = check_connector(spec_file)

    assert document is not None, [p.format() for p in problems if p.severity == "error"][:5]
    assert all(p.severity == "warning" for p in problems)
    assert len(problems) == DEFECTS  # one each: none lost, none said twice
    lines = spec_file.read_text().splitlines()
    for problem in problems:
        assert problem.pointer.startswith(("/paths/~1things", "/components/schemas/Things"))
        assert problem.file == str(spec_file) and problem.line is not None and problem.line > 1
        last = problem.pointer.rsplit("/", 1)[1].replace("~1", "/").replace("~0", "~")
        if not last.isdigit():  # the line of a key names it
            assert f'"{last}"' in lines[problem.line - 1], problem.format()
    said = "\n".join(p.format() for p in problems)
    for words in ("'description' is a required property", "'in' is a required property",
                  "('deprecatedSince' was unexpected)", 'the default "first" is not of type',
                  "query parameter 'page' is declared twice",
                  "path parameter 'tenant' of GET /things6 is not in the path",
                  "points at nothing", '"strin" is not one of'):
        assert words in said, words
    assert len(DEFECT_KINDS) == 8


def test_a_large_defective_spec_validates_in_under_three_seconds_of_cpu(spec_file):
    check_connector(spec_file)  # imports and caches warm, as in a validate after the first
    started = time.process_time()
    document, _problems = check_connector(spec_file)
    spent = time.process_time() - started
    assert document is not None
    assert spent < 3.0, f"{spent:.2f} s of CPU"


def test_the_same_defects_in_what_the_connector_reaches_are_errors(spec, tmp_path):
    broken = copy.deepcopy(spec)
    create = broken["paths"]["/customers"]["post"]
    create["deprecatedSince"] = "2024-01-01"  # the operation itself
    customer = broken["components"]["schemas"]["Customer"]  # reached through its $ref
    customer["properties"]["email"]["default"] = 42
    update = broken["paths"]["/customers/{id}"]
    update["parameters"].append({"name": "tenant", "in": "path", "required": True,
                                 "schema": {"type": "string"}})  # the path item's
    path = written(tmp_path, broken)

    document, problems = check_connector(path)

    assert document is None
    errors = {(p.pointer, p.message) for p in problems if p.severity == "error"}
    assert errors == {
        ("/paths/~1customers/post", "OpenAPI: Additional properties are not allowed "
                                    "('deprecatedSince' was unexpected)"),
        ("/components/schemas/Customer/properties/email/default",
         "OpenAPI: the default 42 is not of type 'string'"),
        ("/paths/~1customers~1{id}/parameters/1",
         "OpenAPI: path parameter 'tenant' of PATCH /customers/{id} is not in the path"),
        ("/x-synchronization/objects/Customer/push/update/params",
         "path parameter 'tenant' of PATCH /customers/{id} is never provided: add "
         "params.tenant"),
    }
    assert sum(p.severity == "warning" for p in problems) == DEFECTS


def test_strict_makes_every_problem_an_error(spec_file, capsys):
    document, problems = check_connector(spec_file, strict=True)
    assert document is None
    assert len(problems) == DEFECTS and all(p.severity == "error" for p in problems)

    assert main(["validate", str(spec_file)]) == 0
    assert "warning: OpenAPI: 'in' is a required property" in capsys.readouterr().err
    assert main(["validate", "--strict", str(spec_file)]) == 1
    err = capsys.readouterr().err
    assert f"INVALID — {DEFECTS} problem(s)" in err and "warning:" not in err


def test_formats_in_the_spec_itself_are_not_checked(spec, tmp_path):
    """As before jsonschema-rs: a vendor's contact email written as prose is no problem."""
    document = copy.deepcopy(spec)
    document["info"]["contact"] = {"email": "support at everything dot example"}
    loaded, problems = check_connector(written(tmp_path, document))
    assert loaded is not None
    assert not [p for p in problems if p.pointer.startswith("/info")]
