"""Form bodies as OpenAPI 3 says to encode them (pure, no I/O).

A vendor whose operation takes ``application/x-www-form-urlencoded`` or
``multipart/form-data`` documents the wire format in the media type's ``encoding``
object: per property a ``style`` (``form`` by default, ``spaceDelimited``,
``pipeDelimited``, ``deepObject``), ``explode`` (true for ``form``) and, for multipart,
a ``contentType``. The transform builds a structured body (checked against the request
schema as such); this module turns it into the bytes the vendor expects:

* ``form`` + explode: ``tags=a&tags=b``; an object's properties as fields of their own
  (``city=Paris``); without explode, ``tags=a,b`` and ``address=city,Paris``;
* ``deepObject``: ``billing_address[city]=Paris``, nested to any depth, list items by
  index (``charges[0][amount]=500``) — what Stripe-like APIs read;
* booleans ``true`` / ``false``, numbers as JSON writes them, nulls left out (an empty
  list or object too: a form has no way to say "empty");
* multipart: one part per property (a list: one part per item), text as
  ``text/plain``, objects as ``application/json``, unless ``contentType`` says
  otherwise; a property whose encoding sets ``style`` or ``explode`` is sent as the form
  fields above, one part each. The boundary is derived from the content, so the same
  body is the same bytes — in ``preview`` and on every retry.

What a form cannot carry — a list of objects under ``form`` style, an object inside
an object's ``form`` fields, a null inside a list, a body that is not an object — is
a ``SchemaViolation`` naming the field (and the ``encoding`` that would carry it),
never a field silently left out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any, NoReturn
from urllib.parse import quote_plus

from shared.errors import SchemaViolation
from shared.json_pointer import join_pointer
from shared.transform.expressions import as_text

URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
_DELIMITERS = {"form": ",", "spaceDelimited": " ", "pipeDelimited": "|"}
_WIRE_DELIMITERS = {",": ",", " ": "%20", "|": "|"}


def form_media(content_type: str | None) -> str | None:
    """``URLENCODED`` or ``MULTIPART`` when ``content_type`` is one of them, else ``None``."""
    media = (content_type or "").split(";")[0].strip().lower()
    return media if media in (URLENCODED, MULTIPART) else None


@dataclasses.dataclass(frozen=True)
class EncodedBody:
    """A form body as sent: its ``Content-Type`` (with the boundary) and its bytes."""

    content_type: str
    content: bytes


def encode_form(media: str, body: Any, encoding: Mapping[str, Any]) -> EncodedBody:
    """``body`` (an object) encoded as ``media`` per the operation's ``encoding``.

    Raises ``SchemaViolation`` for a body the form cannot represent."""
    if not isinstance(body, Mapping):
        _refuse(media, "/", f"a form body must be an object, not {_kind(body)}")
    if media == MULTIPART:
        return _multipart(body, encoding)
    fields = [f for name, value in body.items() for f in _fields(media, name, value, encoding)]
    return EncodedBody(URLENCODED, "&".join(f.urlencoded() for f in fields).encode("ascii"))


@dataclasses.dataclass(frozen=True)
class _Field:
    """One ``name=value`` of a form: the name's parts (``charges``, ``0``, ``amount`` is
    ``charges[0][amount]``) and the values, joined by ``delimiter`` when several."""

    path: tuple[str, ...]
    values: tuple[str, ...]
    delimiter: str = ","

    def name(self) -> str:
        return self.path[0] + "".join(f"[{part}]" for part in self.path[1:])

    def text(self) -> str:
        return self.delimiter.join(self.values)

    def urlencoded(self) -> str:
        name = quote_plus(self.path[0], safe="") + "".join(
            f"[{quote_plus(part, safe='')}]" for part in self.path[1:]
        )
        delimiter = _WIRE_DELIMITERS[self.delimiter]
        return f"{name}={delimiter.join(quote_plus(v, safe='') for v in self.values)}"


def _fields(media: str, name: str, value: Any, encoding: Mapping[str, Any]) -> list[_Field]:
    """The form fields of the body's property ``name``."""
    if value is None:
        return []
    entry = encoding.get(name) if isinstance(encoding.get(name), Mapping) else {}
    style = str(entry.get("style") or "form")
    explode = bool(entry.get("explode", style == "form"))
    pointer = join_pointer("", name)
    if _is_scalar(value):
        return [_Field((name,), (_scalar(value),))]
    if style == "deepObject":
        return _deep(media, (name,), value, pointer)
    if isinstance(value, list):
        return _list_fields(media, name, value, style, explode, pointer)
    return _object_fields(media, name, value, style, explode, pointer)


def _list_fields(
    media: str, name: str, items: list[Any], style: str, explode: bool, pointer: str
) -> list[_Field]:
    if style not in _DELIMITERS:
        _refuse(media, pointer, f"style {style!r} does not apply to a list")
    for index, item in enumerate(items):
        if not _is_scalar(item):
            where = join_pointer(pointer, index)
            what = "a null" if item is None else _kind(item)
            hint = "" if item is None else (
                f": declare style deepObject for {name!r} in the operation's encoding "
                f"({name}[{index}][key]=value)"
            )
            _refuse(media, where, f"{what} in a list has no encoding in style {style!r}{hint}")
    values = tuple(_scalar(item) for item in items)
    if not values:
        return []
    if explode:
        return [_Field((name,), (value,)) for value in values]
    return [_Field((name,), values, _DELIMITERS[style])]


def _object_fields(
    media: str, name: str, value: Mapping[str, Any], style: str, explode: bool, pointer: str
) -> list[_Field]:
    if style != "form":
        _refuse(media, pointer, f"style {style!r} does not apply to an object")
    for key, item in value.items():
        if item is not None and not _is_scalar(item):
            _refuse(
                media,
                join_pointer(pointer, key),
                f"{_kind(item)} inside an object has no encoding in style 'form': declare style "
                f"deepObject for {name!r} in the operation's encoding "
                f"({name}[{key}][…]=value)",
            )
    present = [(key, _scalar(item)) for key, item in value.items() if item is not None]
    if explode:
        return [_Field((key,), (text,)) for key, text in present]
    if not present:
        return []
    return [_Field((name,), tuple(part for pair in present for part in pair))]


def _deep(media: str, path: tuple[str, ...], value: Any, pointer: str) -> list[_Field]:
    """``name[key][0][key]=value`` for every scalar under ``value``; nulls left out."""
    if _is_scalar(value):
        return [_Field(path, (_scalar(value),))]
    if isinstance(value, Mapping):
        return [
            field
            for key, item in value.items()
            if item is not None
            for field in _deep(media, (*path, str(key)), item, join_pointer(pointer, key))
        ]
    fields = []
    for index, item in enumerate(value):
        if item is None:
            _refuse(media, join_pointer(pointer, index), "a null in a list has no form encoding")
        fields += _deep(media, (*path, str(index)), item, join_pointer(pointer, index))
    return fields


# -- multipart ------------------------------------------------------------------------------


def _multipart(body: Mapping[str, Any], encoding: Mapping[str, Any]) -> EncodedBody:
    parts: list[tuple[str, str | None, bytes]] = []  # (name, content type, content)
    for name, value in body.items():
        entry = encoding.get(name) if isinstance(encoding.get(name), Mapping) else {}
        if value is None:
            continue
        if "style" in entry or "explode" in entry:
            parts += [
                (f.name(), None, f.text().encode())
                for f in _fields(MULTIPART, name, value, encoding)
            ]
            continue
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            pointer = join_pointer("", name, *([index] if isinstance(value, list) else []))
            parts.append((name, *_part(item, entry.get("contentType"), pointer)))
    return _assemble(parts)


def _part(value: Any, declared: Any, pointer: str) -> tuple[str | None, bytes]:
    """The content type (``None``: text/plain, RFC 7578's default) and bytes of a part."""
    if value is None:
        _refuse(MULTIPART, pointer, "a null in a list has no multipart encoding")
    default = "text/plain" if _is_scalar(value) else "application/json"
    media = str(declared).split(",")[0].strip() if declared else default
    bare = media.split(";")[0].strip().lower()
    if bare == "application/json" or bare.endswith("+json"):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    elif _is_scalar(value):
        text = _scalar(value)
    else:
        _refuse(MULTIPART, pointer, f"{_kind(value)} cannot be sent as a {media} part")
    return (None if bare == "text/plain" and not declared else media), text.encode()


def _assemble(parts: list[tuple[str, str | None, bytes]]) -> EncodedBody:
    blocks = []
    for name, media, content in parts:
        head = f'Content-Disposition: form-data; name="{_quoted(name)}"\r\n'
        if media:
            head += f"Content-Type: {media}\r\n"
        blocks.append((head + "\r\n").encode() + content)
    boundary = _boundary(blocks)
    delimiter = f"--{boundary}\r\n".encode()
    content = b"".join(delimiter + block + b"\r\n" for block in blocks)
    content += f"--{boundary}--\r\n".encode()
    return EncodedBody(f"{MULTIPART}; boundary={boundary}", content)


def _boundary(blocks: list[bytes]) -> str:
    """A boundary derived from the parts (the same body, the same bytes), none of which
    holds it."""
    digest = hashlib.sha256(b"\0".join(blocks))
    while True:
        boundary = "bss-sync-" + digest.hexdigest()[:32]
        if not any(boundary.encode() in block for block in blocks):
            return boundary
        digest.update(b"\0")


def _quoted(name: str) -> str:
    """A part name in its quoted header parameter (WHATWG's escaping)."""
    return name.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22")


# -- values ---------------------------------------------------------------------------------


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _scalar(value: Any) -> str:
    return as_text(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list"}.get(type(value), f"a {type(value).__name__}")


def _refuse(media: str, pointer: str, reason: str) -> NoReturn:
    message = f"the body cannot be sent as {media}: at {pointer or '/'}: {reason}"
    raise SchemaViolation(message, details={"violations": [f"at {pointer or '/'}: {reason}"]})
