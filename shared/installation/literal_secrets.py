"""Secrets written into an installation file where a reference belongs; pure.

Only ``credentials`` may hold what authenticates, and only as references
(``env:NAME`` / ``file:PATH``, :mod:`shared.credentials`); the schema holds them
to that. Elsewhere a secret would be stored in the database as written, so an
instance's ``settings`` and ``variables`` (the free-form parts of the file), and
its ``server``, are searched for three things:

* a field **named like a secret**, at any depth, holding a string or a number
  (a list or object under such a name: each value in it). A name is split into
  words (``clientSecret``, ``client_secret``, ``X-Api-Key`` → client secret, x api
  key) and designates a secret when its last word is one of :data:`SECRET_WORDS`
  (plural or not), or its last two words are one of :data:`SECRET_PAIRS`. So
  ``password``, ``dbPassword``, ``accessToken``, ``client_secret``, ``apiKey``,
  ``private_key`` and ``credentials`` do; ``tokenUrl``, ``tokenAuth``,
  ``passwordPolicy`` and a bare ``key`` (``sortKey``, ``idempotencyKey``) do not.
  A reference there is refused too: settings and variables are not resolved, so
  the secret has to move to ``credentials`` either way;
* a value **shaped like a secret** whatever its name (:data:`SECRET_SHAPES`: a PEM
  private key, a JWT, well-known vendor key prefixes; and a ``Basic`` header value
  that decodes to ``user:password``, a ``Bearer`` one of 16+ letters and digits) — a
  heuristic that errs towards what is surely a secret;
* a **URL with a password** (``https://user:password@host``).

``lookups`` are not searched: their keys are BSS values, not field names.
A problem names the field and what to do, never the value.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any

from shared.json_pointer import join_pointer

#: A field whose name's last word is one of these holds a secret.
SECRET_WORDS = frozenset({
    "password", "passwd", "pwd", "passphrase", "secret", "token", "apikey", "hapikey",
    "credential", "authorization", "cookie", "privatekey", "secretkey",
})
#: …or whose last two words are one of these.
SECRET_PAIRS = frozenset({
    ("api", "key"), ("private", "key"), ("secret", "key"), ("access", "key"),
    ("signing", "key"), ("encryption", "key"), ("master", "key"), ("client", "key"),
    ("app", "key"), ("session", "key"), ("shared", "key"),
})
#: Values that are secrets whatever the field's name (searched anywhere in the value, or
#: matched whole where anchored).
SECRET_SHAPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("a private key", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")),
    ("a JSON Web Token", re.compile(r"^eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\."
                                    r"[A-Za-z0-9_-]+$")),
    ("a Stripe key", re.compile(r"^[sr]k_(?:live|test)_[A-Za-z0-9]{10,}$")),
    ("a GitHub token", re.compile(r"^(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_\w{30,})$")),
    ("a Slack token", re.compile(r"^xox[abprs]-[A-Za-z0-9-]{10,}$")),
    ("a HubSpot private app token", re.compile(r"^pat-(?:na|eu)\d-[0-9a-f-]{30,}$")),
    ("a Google API key", re.compile(r"^AIza[0-9A-Za-z_-]{35}$")),
)
_AUTHORIZATION = re.compile(r"^(?i:(basic)|bearer)\s+([A-Za-z0-9+/=._~-]+)$")
_URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#@\s:]*:[^/?#@\s]+@", re.IGNORECASE)
_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")

_INSTEAD = "declare it under the instance's credentials as env:NAME or file:PATH"


def names_a_secret(name: str) -> bool:
    """Whether a field called ``name`` holds a secret (see the module's rule)."""
    words = [w.lower() for w in re.split(r"[^A-Za-z0-9]+", _WORD_BOUNDARY.sub(" ", name)) if w]
    if not words:
        return False
    last = words[-1].removesuffix("s")
    return last in SECRET_WORDS or (len(words) > 1 and (words[-2], last) in SECRET_PAIRS)


def secret_shape(value: str) -> str | None:
    """What secret ``value`` looks like (``"a JSON Web Token"``), or ``None``."""
    for kind, pattern in SECRET_SHAPES:
        if pattern.search(value):
            return kind
    if (match := _AUTHORIZATION.match(value)) and _is_credential(match[2], basic=bool(match[1])):
        return "an Authorization header value"
    return None


def _is_credential(token: str, *, basic: bool) -> bool:
    """A basic-auth value (base64 of ``user:password``) or a bearer token (16+ characters,
    letters and digits) — not the words of "Basic subscription"."""
    if basic:
        try:
            return b":" in base64.b64decode(token, validate=True)
        except ValueError:
            return False
    return len(token) >= 16 and any(c.isdigit() for c in token) \
        and any(c.isalpha() for c in token)


def literal_secret_problems(base: str, instance: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(pointer, sentence)`` for each secret written into the instance at ``base``."""
    server = instance.get("server")
    if isinstance(server, str) and _URL_PASSWORD.search(server):
        yield base + "/server", ("the server URL holds a password; give the user and "
                                 "password as credentials (username, password), each as "
                                 "env:NAME or file:PATH")
    for section in ("settings", "variables"):
        yield from _walk(join_pointer(base, section), instance.get(section), section, None)


def _walk(pointer: str, value: Any, section: str,
          secret_name: str | None) -> Iterator[tuple[str, str]]:
    """Problems in ``value`` at ``pointer``; ``secret_name``: the secret-named field above."""
    if isinstance(value, dict):
        for key, item in value.items():
            name = secret_name or (key if names_a_secret(str(key)) else None)
            yield from _walk(join_pointer(pointer, str(key)), item, section, name)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(join_pointer(pointer, index), item, section, secret_name)
    elif secret_name is not None and _holds_something(value):
        yield pointer, (f"{secret_name!r} names a secret, which does not go in {section} "
                        f"(they are stored as written): {_INSTEAD}")
    elif isinstance(value, str) and (kind := secret_shape(value)):
        yield pointer, (f"looks like {kind}, a secret that never goes in the installation "
                        f"file: {_INSTEAD}")
    elif isinstance(value, str) and _URL_PASSWORD.search(value):
        yield pointer, f"holds a URL with a password: {_INSTEAD}"


def _holds_something(value: Any) -> bool:
    """A non-empty string or a number (``true``, ``null`` and ``""`` hold no secret)."""
    if isinstance(value, bool) or value is None:
        return False
    return isinstance(value, int | float) or (isinstance(value, str) and value != "")
