"""Installation file validation and the desired state it describes (no database)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from shared.installation import desired_state, read_file, validate


def problems(data: Any) -> list[tuple[str, str]]:
    return [(p.pointer, p.message) for p in validate(data, lambda _p: None, "x.json")]


def base() -> dict[str, Any]:
    return {"connectors": [{"id": "acme", "spec": "acme.json"}],
            "organizations": [{"id": "org", "name": "Org", "instances": [
                {"id": "inst", "name": "Inst", "connector": "acme",
                 "credentials": {"apiKey": "env:KEY"},
                 "permissions": {"account": {"push": ["create"]}}}]}]}


def test_a_valid_file_has_no_problems() -> None:
    assert problems(base()) == []


def test_not_an_object() -> None:
    assert problems([1]) == [("", "must be an object, not a list")]


def test_a_credential_value_is_never_echoed() -> None:
    data = base()
    data["organizations"][0]["instances"][0]["credentials"] = {"apiKey": "hunter2-secret"}
    found = problems(data)
    assert found == [("/organizations/0/instances/0/credentials/apiKey",
                      "a credential must be a reference like env:NAME or file:PATH; the secret "
                      "itself never goes in the installation file")]
    assert "hunter2" not in json.dumps(found)


def test_invalid_env_name_in_a_reference() -> None:
    data = base()
    data["organizations"][0]["instances"][0]["credentials"] = {"apiKey": "env:MY-KEY"}
    assert problems(data) == [("/organizations/0/instances/0/credentials/apiKey",
                               "credential 'apiKey' names an invalid environment variable "
                               "'MY-KEY'")]


def test_ids_with_dots_and_wrong_types() -> None:
    data = base()
    data["organizations"][0]["id"] = "org.eu"
    data["organizations"][0]["instances"][0]["active"] = "yes"
    assert problems(data) == [
        ("/organizations/0/id",
         "must use only letters, digits, '-' and '_' (no dots), at most 64 characters"),
        ("/organizations/0/instances/0/active", "must be a boolean, not a string"),
    ]


def test_schedule_shapes() -> None:
    data = base()
    data["schedule"] = 5
    data["organizations"][0]["schedule"] = {"cron": "0 0 * *", "enabled": False}
    assert problems(data) == [
        ("/organizations/0/schedule/cron", "invalid cron expression: a cron expression has 5 "
                                           "fields (minute hour day-of-month month "
                                           "day-of-week), this one has 4"),
        ("/schedule",
         "a schedule is a cron expression or an object with cron, timezone and enabled"),
    ]


def test_lines_of_pointers_in_json_and_yaml(tmp_path: Path) -> None:
    json_file, yaml_file = tmp_path / "i.json", tmp_path / "i.yaml"
    json_file.write_text('{\n  "a": {\n    "b": [\n      1,\n      {"c": 2}\n    ]\n  }\n}\n')
    yaml_file.write_text("a:\n  b:\n    - x\n    - y: 1\n  since: 2025-01-31\n")
    _, line_of = read_file(json_file)
    assert line_of("") == 1
    assert line_of("/a") == 2
    assert line_of("/a/b/1/c") == 5
    assert line_of("/a/missing") == 2
    data, yaml_line_of = read_file(yaml_file)
    assert yaml_line_of("/a/b/1/y") == 4
    assert data["a"]["since"] == "2025-01-31"  # a date stays the string it looks like


def test_desired_state() -> None:
    data = base()
    data["timezone"] = "Europe/Paris"
    data["organizations"][0]["active"] = False
    inst = data["organizations"][0]["instances"][0]
    inst.update({"lookups": {"t": {"a": "b"}}, "rateLimit": {"requests": 1, "per": "1s"},
                 "schedule": {"enabled": False}})
    document = SimpleNamespace(title="Acme", version="1", sha256="0" * 64, document={"x": 1})
    state = desired_state(data, {"acme": document})
    assert state.connectors[0].sources == {"spec": ["acme.json"], "overlay": None}
    assert state.organizations[0].timezone == "Europe/Paris"
    instance = state.instances[0]
    assert not instance.active  # its organization is inactive
    assert instance.settings == {"lookups": {"t": {"a": "b"}},
                                 "rateLimit": {"requests": 1, "per": "1s"}}
    assert instance.permissions == {("account", "push", "create")}
    installation, own = state.schedules
    assert (installation.cron, installation.timezone) == ("0 23 * * *", "Europe/Paris")
    assert (own.scope, own.cron, own.enabled) == ("instance", "0 23 * * *", False)


def test_lines_of_a_tab_indented_json_file(tmp_path: Path) -> None:
    path = tmp_path / "tabs.json"
    path.write_text('{\n\t"a": {\n\t\t"b": [1, {"c": "x\\/y"}]\n\t}\n}\n')
    data, line_of = read_file(path)
    assert data == {"a": {"b": [1, {"c": "x/y"}]}}
    assert line_of("/a/b/1/c") == 3
