"""Settings read from the environment: unusable values are one line naming the variable,
never echoing a password; ``--help`` of a service lists what it reads."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.settings import (
    DEFAULT_AMQP_URL,
    DEFAULT_DATABASE_URL,
    Settings,
    SettingsInvalid,
    environment_help,
    get_setting,
    get_settings,
    masked_url,
)

SECRET = "pw-s3cret"


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize("url", [
    "nonsense",
    f"host=db user=app password={SECRET} dbname=app",  # libpq key=value: a URL is required
    f"mysql://app:{SECRET}@db/app",
    f"postgresql://app:{SECRET}@[db/app",               # unmatched [ (libpq's IPv6 syntax)
    f"postgresql://app:{SECRET}@db:54x2/app",
    "postgresql://app:pw/s3cret@db/app",                # an unencoded / in the password
    f"postgresql://app:{SECRET}%zz@db/app",             # libpq would quote this part back
    f"postgresql://db/app?sslmode=require&nonsense=1&password={SECRET}",
])
def test_a_malformed_database_url_is_one_line_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(SettingsInvalid) as caught:
        get_settings()
    message = str(caught.value)
    assert message.startswith("DATABASE_URL is not a PostgreSQL URL: ")
    assert "\n" not in message
    assert SECRET not in message and "s3cret" not in message


@pytest.mark.parametrize("url", [
    f"http://guest:{SECRET}@rabbit/",
    f"amqp:guest:{SECRET}@rabbit",                      # no //
    "amqp:///%2F",                                      # no host
    f"amqp://guest:{SECRET}@rabbit:56x2/%2F",
    "amqp://guest:pw/s3cret@rabbit/%2F",                # an unencoded / in the password
])
def test_a_malformed_amqp_url_is_one_line_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("AMQP_URL", url)
    with pytest.raises(SettingsInvalid) as caught:
        get_settings()
    message = str(caught.value)
    assert message.startswith("AMQP_URL is not a RabbitMQ URL: ")
    assert "\n" not in message
    assert SECRET not in message and "s3cret" not in message


def test_the_reason_says_what_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:{SECRET}@[db/app")
    monkeypatch.setenv("AMQP_URL", "http://rabbit/")
    with pytest.raises(SettingsInvalid) as caught:
        get_settings()
    assert str(caught.value) == (
        "AMQP_URL is not a RabbitMQ URL: http://rabbit/: it must start with amqp:// or "
        "amqps:// (amqp://user:password@host:port/vhost); DATABASE_URL is not a PostgreSQL "
        "URL: postgresql://app:***@[db/app: end of string reached when looking for matching "
        "\"]\" in IPv6 host address")


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("CONCURRENCY", "many", "CONCURRENCY is invalid: input should be a valid integer"),
    ("CONCURRENCY", "0", "CONCURRENCY is invalid: input should be greater than or equal to 1"),
    ("RETRY_DELAYS", "30,120", "RETRY_DELAYS is invalid: it must be JSON, like "
                               "[30, 120, 600, 3600]"),
    ("EVENT_LOOP", "trio", "EVENT_LOOP is invalid: input should be 'uvloop' or 'asyncio'"),
])
def test_other_unusable_values_name_their_variable(
        monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsInvalid, match="^" + expected.replace("[", r"\[")):
        get_settings()


@pytest.mark.parametrize(("variable", "url"), [
    ("AMQP_URL", DEFAULT_AMQP_URL),
    ("AMQP_URL", "amqps://app:p%2Fw@rabbit.example:5671/bss-sync-demo?heartbeat=30"),
    ("AMQP_URL", "amqp://rabbit"),
    ("DATABASE_URL", DEFAULT_DATABASE_URL),
    ("DATABASE_URL", "postgres://app:p%40w@db.example/app?sslmode=require"),
    ("DATABASE_URL", "postgresql://app@db1:5432,db2:5433/app?target_session_attrs=read-write"),
    ("DATABASE_URL", "postgresql:///app"),  # the local socket
])
def test_usable_urls_are_taken_as_they_are(monkeypatch: pytest.MonkeyPatch, variable: str,
                                           url: str) -> None:
    monkeypatch.setenv(variable, url)
    assert getattr(get_settings(), variable.lower()) == url


@pytest.mark.parametrize(("url", "shown"), [
    ("amqp://guest:guest@127.0.0.1:5672/%2F", "amqp://guest:***@127.0.0.1:5672/%2F"),
    ("postgresql://postgres@127.0.0.1/postgres", "postgresql://postgres@127.0.0.1/postgres"),
    ("postgresql://u:p/a@ss@h/db", "postgresql://u:***@h/db"),
    ("postgresql://h/db?user=a@b", "postgresql://h/db?user=a@b"),
    ("amqp:guest:pw@rabbit", "***@rabbit"),
    ("host=h password=pw dbname=d", "host=h password=*** dbname=d"),
    ("postgresql://h/db?password=pw&sslmode=require",
     "postgresql://h/db?password=***&sslmode=require"),
])
def test_masked_url(url: str, shown: str) -> None:
    assert masked_url(url) == shown


def test_the_environment_help_is_every_field_with_its_default() -> None:
    text = environment_help("pusher")
    for name, field in Settings.model_fields.items():
        if name == "management_url":  # read by tooling and tests only
            assert "MANAGEMENT_URL" not in text
            continue
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        readers = extra.get("services") or ["pusher"]
        shown = text if "pusher" in readers else environment_help(str(readers[0]))
        assert f"  {name.upper()}  (default: " in shown
        assert field.description and field.description.split()[0] in shown
    assert "REDELIVERY_MAX_AGE_DAYS" in environment_help("dispatcher")
    assert f"AMQP_URL  (default: {DEFAULT_AMQP_URL})" in text
    assert "RETRY_DELAYS  (default: [30, 120, 600, 3600])" in text
    assert "BSS_API_BATCH_READS  (default: true)" in text
    assert "PREFETCH  (default: unset)" in text


def test_the_dispatcher_is_not_told_about_the_bss_api() -> None:
    text = environment_help("dispatcher")
    assert "AMQP_URL" in text and "DATABASE_URL" in text and "CONCURRENCY" in text
    assert "BSS_API" not in text


def test_one_setting_is_read_alone_when_another_variable_is_unusable(monkeypatch):
    """`bss-sync validate` compiles mappings (TRANSFORM_PATHS) and never connects: a
    malformed DATABASE_URL must not stop it; the switch itself is still checked."""
    monkeypatch.setenv("DATABASE_URL", f"postgres://app:{SECRET}@[db")
    monkeypatch.setenv("TRANSFORM_PATHS", "jsonata")
    with pytest.raises(SettingsInvalid):
        get_settings()
    assert get_setting("transform_paths") == "jsonata"
    monkeypatch.setenv("TRANSFORM_PATHS", "quick")
    with pytest.raises(SettingsInvalid, match=r"^TRANSFORM_PATHS is invalid") as caught:
        get_setting("transform_paths")
    assert SECRET not in str(caught.value)


def test_one_setting_is_the_whole_settings_value_when_they_are_valid(monkeypatch):
    monkeypatch.setenv("SCHEMA_CHECKS", "jsonschema")
    assert get_setting("schema_checks") == get_settings().schema_checks == "jsonschema"


def test_credentials_dir_defaults_to_run_secrets_and_must_be_absolute(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIR", raising=False)
    assert get_settings().credentials_dir == "/run/secrets"
    get_settings.cache_clear()
    monkeypatch.setenv("CREDENTIALS_DIR", "secrets")
    with pytest.raises(SettingsInvalid) as caught:
        get_settings()
    assert str(caught.value) == "CREDENTIALS_DIR must be an absolute path, not 'secrets'"
