"""Credential references: resolved at use time, never echoed, always redacted afterwards;
``file:`` references confined to ``CREDENTIALS_DIR``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.credentials import (
    confined_path,
    is_reference,
    reference_problem,
    resolve_credential,
    resolve_credentials,
)
from shared.errors import ConfigurationError
from shared.logging import redact
from shared.settings import get_settings


@pytest.fixture
def secrets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``CREDENTIALS_DIR`` set to a directory of the test's own."""
    directory = tmp_path / "secrets"
    directory.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIR", str(directory))
    get_settings.cache_clear()
    yield directory
    get_settings.cache_clear()


def test_env_reference_is_resolved_and_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIT_ACME_KEY", "env-secret-4711")
    assert resolve_credential("env:UNIT_ACME_KEY") == "env-secret-4711"
    assert redact("calling with env-secret-4711") == "calling with ***"


def test_file_reference_strips_one_trailing_newline(secrets_dir: Path) -> None:
    secret = secrets_dir / "secret"
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


def test_unreadable_file_names_the_reference(secrets_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"file:.*/nope: cannot read the file"):
        resolve_credential(f"file:{secrets_dir / 'nope'}")
    empty = secrets_dir / "empty"
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


# ---------------------------------------------------------------------- CREDENTIALS_DIR


def test_a_relative_file_reference_is_relative_to_the_credentials_dir(
        secrets_dir: Path) -> None:
    (secrets_dir / "acme").mkdir()
    (secrets_dir / "acme" / "key").write_text("relative-secret-77\n")
    assert resolve_credential("file:acme/key") == "relative-secret-77"
    assert resolve_credential(f"file:{secrets_dir}/acme/key") == "relative-secret-77"


@pytest.mark.parametrize("target", ["../outside", "acme/../../outside", "acme/../key",
                                    "/etc/hostname"])
def test_a_file_reference_leaving_the_directory_is_refused_naming_it(
        secrets_dir: Path, target: str) -> None:
    (secrets_dir.parent / "outside").write_text("outside-secret-1234")
    with pytest.raises(ConfigurationError) as caught:
        resolve_credential(f"file:{target}")
    message = str(caught.value)
    assert message.startswith(f"credential file:{target} names {target!r}")
    assert f"CREDENTIALS_DIR ({secrets_dir})" in message and "\n" not in message
    assert "outside-secret" not in message


def test_a_symbolic_link_leading_out_is_refused_when_read(secrets_dir: Path) -> None:
    outside = secrets_dir.parent / "host-file"
    outside.write_text("host-secret-5678")
    (secrets_dir / "link").symlink_to(outside)
    (secrets_dir / "dir-link").symlink_to(secrets_dir.parent)
    for target in ("link", "dir-link/host-file", f"{secrets_dir}/link"):
        with pytest.raises(ConfigurationError, match="a symbolic link leading outside "
                                                     "CREDENTIALS_DIR"):
            resolve_credential(f"file:{target}")


def test_symbolic_links_within_the_directory_are_followed(secrets_dir: Path,
                                                           tmp_path: Path) -> None:
    """As Kubernetes mounts secrets: ``key -> ..data/key``, ``..data -> ..2025_06_30``."""
    (secrets_dir / "..2025_06_30").mkdir()
    (secrets_dir / "..2025_06_30" / "key").write_text("k8s-secret-2468")
    (secrets_dir / "..data").symlink_to("..2025_06_30")
    (secrets_dir / "key").symlink_to("..data/key")
    assert resolve_credential("file:key") == "k8s-secret-2468"
    linked_dir = tmp_path / "linked"  # CREDENTIALS_DIR may itself be a link
    linked_dir.symlink_to(secrets_dir)
    assert resolve_credential("file:key", directory=linked_dir) == "k8s-secret-2468"


def test_confinement_is_checked_before_the_file_exists(tmp_path: Path) -> None:
    assert confined_path("not-yet", tmp_path) == Path(os.path.realpath(tmp_path)) / "not-yet"
    assert reference_problem("file:not-yet", tmp_path) is None
    assert "outside CREDENTIALS_DIR" in (reference_problem("file:/etc/passwd", tmp_path) or "")
    assert reference_problem("file:/etc/passwd") is None  # no directory: syntax only
    with pytest.raises(ValueError, match="outside CREDENTIALS_DIR"):  # a prefix is not inside
        confined_path(f"{tmp_path}-evil/key", tmp_path)
    assert "NUL" in (reference_problem("file:a\x00b", tmp_path) or "")


def test_identifiers_are_masked_whole_and_secrets_in_pieces(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIT_USER", "integration-account")
    monkeypatch.setenv("UNIT_PASSWORD", "Vq3-w7Yt-Pz9m-9Lx")
    resolve_credentials({"username": "env:UNIT_USER", "password": "env:UNIT_PASSWORD"})
    assert redact("user integration-account") == "user ***"
    assert redact("an integration test") == "an integration test"
    assert redact("echoed: w7Yt-Pz9m") == "echoed: ***"
