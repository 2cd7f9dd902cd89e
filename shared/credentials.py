"""Credential references: the database and the installation file hold only
``env:NAME`` or ``file:PATH``; the value is read at use time, never stored.

A ``file:`` reference is confined to one directory, ``CREDENTIALS_DIR``
(``/run/secrets`` by default, where Docker and Compose mount secrets): a relative
path is relative to it, an absolute one must lie inside it, ``..`` is refused, and
the file's real path (symbolic links followed) must stay inside it too. Whoever
writes an installation file thus cannot have a service read, and send to the
server the same file names, any other file the service can read.

Every resolved value is registered with :func:`shared.logging.register_secret`,
so it is masked wherever it might appear afterwards (logs, audit rows, dead
letter headers, error messages), in pieces and encoded too — except the pieces of
an identifier (:data:`IDENTIFIER_CREDENTIALS`), which is masked only whole.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePath

from shared.errors import ConfigurationError
from shared.logging import register_secret
from shared.settings import get_setting

REFERENCE_PATTERN = r"^(env|file):.+"
_REFERENCE = re.compile(REFERENCE_PATTERN, re.DOTALL)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Credential names whose value identifies rather than authenticates (the user of a
#: basic-auth pair, an OAuth2 client id): masked whole, not piece by piece.
IDENTIFIER_CREDENTIALS = frozenset({"username", "clientId"})


def is_reference(value: object) -> bool:
    """Whether ``value`` is a credential reference (``env:NAME`` or ``file:PATH``)."""
    return isinstance(value, str) and bool(_REFERENCE.match(value))


def reference_problem(value: object, directory: str | Path | None = None) -> str | None:
    """Why ``value`` is not a usable reference (one sentence, never echoing it), or ``None``.

    With ``directory`` (``CREDENTIALS_DIR``), a ``file:`` reference is also held to it
    (:func:`confined_path`).
    """
    if not is_reference(value):
        return ("must be a reference like env:NAME or file:PATH; "
                "the secret itself never goes in the installation file or the database")
    assert isinstance(value, str)
    kind, _, target = value.partition(":")
    if kind == "env" and not _ENV_NAME.match(target):
        return f"names an invalid environment variable {target!r}"
    if kind == "file" and directory is not None:
        try:
            confined_path(target, directory)
        except ValueError as exc:
            return str(exc)
    return None


def confined_path(target: str, directory: str | Path) -> Path:
    """The real path of ``file:target`` inside ``directory`` (``CREDENTIALS_DIR``).

    ``target`` is relative to ``directory``, or absolute and inside it. Raises
    ``ValueError`` with a sentence (naming the path, which is no secret) when it
    holds a ``..`` segment or a NUL, lies outside ``directory``, or leads outside
    through a symbolic link (followed as far as the path exists).
    """
    base = Path(os.path.abspath(directory))
    where = f"CREDENTIALS_DIR ({base})"
    if "\x00" in target:
        raise ValueError(f"names a path with a NUL character; give a file in {where}")
    if ".." in PurePath(target).parts:
        raise ValueError(f"names {target!r}: '..' is not allowed; give a file in {where}, "
                         "relative to it or absolute")
    path = Path(os.path.abspath(base / target))
    if not path.is_relative_to(base):
        raise ValueError(f"names {target!r}, outside {where}; give a file in it, relative "
                         "to it or absolute")
    if not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(base)):
        raise ValueError(f"names {target!r}, a symbolic link leading outside {where}")
    return Path(os.path.realpath(path))


def credentials_dir() -> Path:
    """``CREDENTIALS_DIR``, read alone (``SettingsInvalid`` when it is unusable)."""
    return Path(get_setting("credentials_dir"))


def resolve_credential(ref: str, *, identifier: bool = False,
                       directory: str | Path | None = None) -> str:
    """The secret ``ref`` points to: an environment variable or a file's content.

    A ``file:`` path is held to ``directory`` (default ``CREDENTIALS_DIR``), its
    symbolic links resolved when it is read. One trailing newline of a file is
    stripped. The value is registered for masking (only whole for an
    ``identifier``). Raises ``ConfigurationError`` naming the reference (never a
    value) when it is not a reference, the variable is unset or empty, or the file
    is outside the directory or cannot be read.
    """
    problem = reference_problem(ref)
    if problem:
        raise ConfigurationError(f"credential reference {_describe(ref)} {problem}")
    kind, _, target = ref.partition(":")
    if kind == "env":
        value = os.environ.get(target)
        if not value:
            raise ConfigurationError(f"credential {ref}: environment variable {target} is not set")
    else:
        value = _read_file(ref, target, credentials_dir() if directory is None else directory)
    register_secret(value, identifier=identifier)
    return value


def _read_file(ref: str, target: str, directory: str | Path) -> str:
    try:
        path = confined_path(target, directory)
    except ValueError as exc:
        raise ConfigurationError(f"credential {ref} {exc}") from None
    try:
        value = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
        raise ConfigurationError(f"credential {ref}: cannot read the file ({reason})") from None
    value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        raise ConfigurationError(f"credential {ref}: the file is empty")
    return value


def resolve_credentials(refs: Mapping[str, str], *,
                        directory: str | Path | None = None) -> dict[str, str]:
    """Every reference of an instance resolved, by name (identifiers masked only whole).

    Raises ``ConfigurationError``.
    """
    return {name: resolve_credential(ref, identifier=name in IDENTIFIER_CREDENTIALS,
                                     directory=directory)
            for name, ref in refs.items()}


def _describe(value: object) -> str:
    """Name a rejected value without showing it (it may be the secret itself)."""
    if isinstance(value, str):
        return f"({len(value)} characters)"
    return f"of type {type(value).__name__}"
