"""JSON Pointer (RFC 6901) syntax: escaping tokens, joining and splitting pointers.

Pure and dependency-free, so that every layer (connector documents, the
installation file, schema-error sentences, the sandbox) spells pointers the same
way. Finding the value or the line a pointer designates is
:mod:`shared.connector.source`'s business.
"""

from __future__ import annotations


def escape_pointer_token(token: str | int) -> str:
    """``"a/b~c"`` → ``"a~1b~0c"``."""
    return str(token).replace("~", "~0").replace("/", "~1")


def unescape_pointer_token(token: str) -> str:
    """``"a~1b~0c"`` → ``"a/b~c"``."""
    return token.replace("~1", "/").replace("~0", "~")


def join_pointer(base: str, *tokens: str | int) -> str:
    """``join_pointer("/paths", "/a/{b}", "get")`` → ``/paths/~1a~1{b}/get``."""
    return base + "".join("/" + escape_pointer_token(t) for t in tokens)


def split_pointer(pointer: str) -> list[str]:
    """The unescaped tokens of ``pointer`` (``""`` → ``[]``).

    Raises ``ValueError`` when ``pointer`` is neither empty nor starts with ``/``.
    """
    if not pointer:
        return []
    if not pointer.startswith("/"):
        raise ValueError(f"not a JSON pointer: {pointer!r}")
    return [unescape_pointer_token(t) for t in pointer[1:].split("/")]
