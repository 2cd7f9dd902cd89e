"""Credential references: resolved at use time, never echoed, always redacted afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.credentials import (
    is_reference,
    reference_problem,
    resolve_credential,
    resolve_credentials,
)
from shared.errors import ConfigurationError
from shared.logging import redact


def test_env_reference_is_resolved_and_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIT_ACME_KEY", "env-secret-4711")
    assert resolve_credential("env:UNIT_ACME_KEY") == "env-secret-4711"
    assert redact("calling with env-secret-4711") == "calling with ***"


def test_file_reference_strips_one_trailing_newline(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("file-secret-0815\n\n")
    assert resolve_credential(f"file:{secret}") == "file-secret-0815\n"
    secret.write_text("file-secret-0816\n")
    assert resolve_credential(f"file:{secret}") == "file-secret-0816"
    assert "file-secret-0816" not in redact("x file-secret-0816 y")


def test_missing_env_var_names_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNIT_MISSING_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="env:UNIT_MISSING_KEY: environment variable "
                                                 "UNIT_MISSING_KEY is not set"):
        resolve_credential("env:UNIT_MISSING_KEY")


def test_unreadable_file_names_the_reference(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"file:.*/nope: cannot read the file"):
        resolve_credential(f"file:{tmp_path / 'nope'}")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigurationError, match="the file is empty"):
        resolve_credential(f"file:{empty}")


@pytest.mark.parametrize("value", ["sk_live_plain_secret", "vault:secret/x", "env:", "ENV:X", ""])
def test_anything_else_is_rejected_without_echoing_it(value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve_credential(value)
    assert len(value) < 6 or value not in str(caught.value)


def test_reference_checks() -> None:
    assert is_reference("env:A") and is_reference("file:/run/secrets/x")
    assert not is_reference("plain") and not is_reference(None)
    assert reference_problem("env:OK_NAME") is None
    assert reference_problem("env:BAD-NAME") == "names an invalid environment variable 'BAD-NAME'"
    assert "reference like env:NAME" in (reference_problem("abc") or "")


def test_resolve_many(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIT_ID", "client-id-1")
    monkeypatch.setenv("UNIT_SECRET", "client-secret-1")
    assert resolve_credentials({"clientId": "env:UNIT_ID", "clientSecret": "env:UNIT_SECRET"}) == {
        "clientId": "client-id-1", "clientSecret": "client-secret-1"}
