"""Credential references: the database and the installation file hold only
``env:NAME`` or ``file:PATH``; the value is read at use time, never stored.

Every resolved value is registered with :func:`shared.logging.register_secret`,
so it is masked wherever it might appear afterwards (logs, audit rows, dead
letter headers, error messages).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from shared.errors import ConfigurationError
from shared.logging import register_secret

REFERENCE_PATTERN = r"^(env|file):.+"
_REFERENCE = re.compile(REFERENCE_PATTERN, re.DOTALL)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def is_reference(value: object) -> bool:
    """Whether ``value`` is a credential reference (``env:NAME`` or ``file:PATH``)."""
    return isinstance(value, str) and bool(_REFERENCE.match(value))


def reference_problem(value: object) -> str | None:
    """Why ``value`` is not a usable reference (one sentence, never echoing it), or ``None``."""
    if not is_reference(value):
        return ("must be a reference like env:NAME or file:PATH; "
                "the secret itself never goes in the installation file or the database")
    assert isinstance(value, str)
    kind, _, target = value.partition(":")
    if kind == "env" and not _ENV_NAME.match(target):
        return f"names an invalid environment variable {target!r}"
    return None


def resolve_credential(ref: str) -> str:
    """The secret ``ref`` points to: an environment variable or a file's content.

    One trailing newline of a file is stripped. Raises ``ConfigurationError``
    naming the reference (never a value) when it is not a reference, the variable
    is unset or empty, or the file cannot be read.
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
        try:
            value = Path(target).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
            raise ConfigurationError(f"credential {ref}: cannot read the file ({reason})") from None
        value = value.removesuffix("\n").removesuffix("\r")
        if not value:
            raise ConfigurationError(f"credential {ref}: the file is empty")
    register_secret(value)
    return value


def resolve_credentials(refs: Mapping[str, str]) -> dict[str, str]:
    """Every reference of an instance resolved, by name. Raises ``ConfigurationError``."""
    return {name: resolve_credential(ref) for name, ref in refs.items()}


def _describe(value: object) -> str:
    """Name a rejected value without showing it (it may be the secret itself)."""
    if isinstance(value, str):
        return f"({len(value)} characters)"
    return f"of type {type(value).__name__}"
