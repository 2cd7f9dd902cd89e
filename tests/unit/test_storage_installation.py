"""Installation file validation and the desired state it describes (no database)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from shared.installation import desired_state, read_file, validate
from shared.installation.literal_secrets import names_a_secret


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


# ---------------------------------------------------------------------- literal secrets


LITERAL = "Xk9-literal-secret-Q2w"


def instance_problems(change: dict[str, Any], **kw: Any) -> list[tuple[str, str]]:
    data = base()
    data["organizations"][0]["instances"][0].update(change)
    found = [(p.pointer.removeprefix("/organizations/0/instances/0"), p.message)
             for p in validate(data, lambda _p: None, "x.json", **kw)]
    assert LITERAL[3:11] not in json.dumps(found)  # no piece of a value is ever quoted
    return found


@pytest.mark.parametrize("name", [
    "password", "dbPassword", "DB_PASSWORD", "passwd", "pwd", "passphrase", "secret",
    "clientSecret", "client_secret", "webhook-secret", "token", "accessToken",
    "refresh_token", "apiKey", "api_key", "API-KEY", "X-Api-Key", "APIKey", "apikey",
    "hapikey", "privateKey", "private_key", "secretKey", "accessKey", "signing_key",
    "credentials", "Authorization", "cookie", "tokens", "passwords",
])
def test_names_of_secrets(name: str) -> None:
    assert names_a_secret(name)


@pytest.mark.parametrize("name", [
    "tokenUrl", "token_url", "tokenAuth", "passwordPolicy", "secretName", "key", "sortKey",
    "idempotencyKey", "keyField", "region", "scope", "username", "clientId", "author",
    "tokenizer", "passport", "", "__",
])
def test_names_that_are_not_secrets(name: str) -> None:
    assert not names_a_secret(name)


def test_a_secret_named_field_in_settings_or_variables_is_refused_located() -> None:
    found = instance_problems({
        "settings": {"tokenUrl": "https://auth.example/token", "scope": "crm",
                     "oauth": {"clientSecret": LITERAL, "clientId": "abc"},
                     "password": 12345678, "token": "", "apiKey": None, "secret": True},
        "variables": {"region": "eu", "dbPassword": LITERAL, "apiKey": "env:ACME_KEY"},
    })
    assert found == [
        ("/settings/oauth/clientSecret",
         "'clientSecret' names a secret, which does not go in settings (they are stored as "
         "written): declare it under the instance's credentials as env:NAME or file:PATH"),
        ("/settings/password", "'password' names a secret, which does not go in settings "
                               "(they are stored as written): declare it under the instance's "
                               "credentials as env:NAME or file:PATH"),
        ("/variables/apiKey", "'apiKey' names a secret, which does not go in variables (they "
                              "are stored as written): declare it under the instance's "
                              "credentials as env:NAME or file:PATH"),
        ("/variables/dbPassword", "'dbPassword' names a secret, which does not go in variables "
                                  "(they are stored as written): declare it under the "
                                  "instance's credentials as env:NAME or file:PATH"),
    ]


def test_every_value_under_a_secret_named_object_is_refused() -> None:
    found = instance_problems({"settings": {"credentials": {"user": "me", "list": [LITERAL]}}})
    assert [pointer for pointer, _ in found] == ["/settings/credentials/list/0",
                                                 "/settings/credentials/user"]


@pytest.mark.parametrize(("value", "kind"), [
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow" + LITERAL, "a private key"),
    ("-----BEGIN PRIVATE KEY-----\n" + LITERAL, "a private key"),
    ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0." + LITERAL, "a JSON Web Token"),
    ("Basic dXNlcjpYazktbGl0ZXJhbC1zZWNyZXQtUTJ3", "an Authorization header value"),
    ("Bearer " + LITERAL, "an Authorization header value"),
    ("sk_live_" + LITERAL.replace("-", ""), "a Stripe key"),
    ("ghp_" + "a1" * 18, "a GitHub token"),
    ("xoxb-1234-" + LITERAL, "a Slack token"),
    ("pat-na1-" + "0f1e2d3c-" * 4, "a HubSpot private app token"),
])
def test_a_value_shaped_like_a_secret_is_refused_whatever_its_name(value: str,
                                                                   kind: str) -> None:
    found = instance_problems({"variables": {"region": value}})
    assert found == [("/variables/region",
                      f"looks like {kind}, a secret that never goes in the installation file: "
                      "declare it under the instance's credentials as env:NAME or file:PATH")]


@pytest.mark.parametrize("value", ["eu-west-1", "Basic plan", "Basic subscription", "Bearer",
                                   "Bearer tokens-everywhere", "sk_live_", "C-104729",
                                   "https://user@crm.example/", "https://crm.example:8443/a@b"])
def test_ordinary_values_pass(value: str) -> None:
    assert instance_problems({"variables": {"region": value}, "settings": {"x": [value]}}) == []


def test_a_url_with_a_password_is_refused_in_the_server_and_elsewhere() -> None:
    found = instance_problems({"server": f"https://bss:{LITERAL}@crm.example/api",
                               "settings": {"tokenUrl": f"https://a:{LITERAL}@auth.example/"}})
    assert found == [
        ("/server", "the server URL holds a password; give the user and password as "
                    "credentials (username, password), each as env:NAME or file:PATH"),
        ("/settings/tokenUrl", "holds a URL with a password: declare it under the instance's "
                               "credentials as env:NAME or file:PATH"),
    ]


def test_lookups_are_data_not_fields() -> None:
    assert instance_problems({"lookups": {"paymentMethod": {"token": "TOKEN"}}}) == []


def test_file_references_are_held_to_the_credentials_dir(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "escape").symlink_to("/etc/hostname")
    found = instance_problems({"credentials": {
        "a": "file:acme/key", "b": f"file:{secrets_dir}/acme/key", "c": "file:/etc/passwd",
        "d": "file:acme/../../x", "e": "file:escape"}}, credentials_dir=secrets_dir)
    where = f"CREDENTIALS_DIR ({secrets_dir})"
    assert found == [
        ("/credentials/c", f"credential 'c' names '/etc/passwd', outside {where}; give a file "
                           "in it, relative to it or absolute"),
        ("/credentials/d", f"credential 'd' names 'acme/../../x': '..' is not allowed; give a "
                           f"file in {where}, relative to it or absolute"),
        ("/credentials/e", f"credential 'e' names 'escape', a symbolic link leading outside "
                           f"{where}"),
    ]
