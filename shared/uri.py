"""Values in URL paths (pure): RFC 3986 segment data, never a dot segment.

A value put in a path — a record's code, a BSS id — is data: every character but
the unreserved ones is percent-encoded (``/``, ``?``, ``#`` and ``%`` included), and a
segment that comes out as ``.`` or ``..`` is sent as ``%2E`` / ``%2E%2E``, since
clients, proxies and servers resolve dot segments (``PUT /things/..`` is ``PUT /``).
"""

from __future__ import annotations

from urllib.parse import quote

DOT_SEGMENTS = frozenset({".", ".."})


def encode_value(value: str) -> str:
    """``value`` percent-encoded as path segment data (dots left to :func:`no_dot_segment`)."""
    return quote(value, safe="")


def no_dot_segment(segment: str) -> str:
    """``segment``, with its dots encoded when it is ``.`` or ``..``."""
    return segment.replace(".", "%2E") if segment in DOT_SEGMENTS else segment


def path_segment(value: str) -> str:
    """``value`` as one whole path segment: encoded, and never a dot segment."""
    return no_dot_segment(encode_value(value))
