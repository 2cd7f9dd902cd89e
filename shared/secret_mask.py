"""Where secrets, pieces of them and their encoded forms occur in a text; pure, no I/O.

A :class:`SecretMask` holds the registered secrets and masks, in any text, every
run of :data:`MIN_RUN` (8) or more characters that is a substring of one of a
secret's *forms*:

* the secret itself, and percent-encoded (``quote``, ``quote_plus``): a server
  echoing our request shows it that way;
* its base64, standard and URL-safe, at the three byte alignments it can take
  inside a longer encoded value (``Authorization: Basic base64(user:password)``
  holds the password's base64 at the alignment of ``len("user:") % 3``): the
  encoding of the secret's bytes from offset 0, 1 and 2.

So an error quoting 8 characters of a token, or a basic-auth header, shows
``***`` instead. A secret (or form) shorter than 8 characters is masked only
whole; so is an *identifier* (a username, a client id: ``identifier=True``),
whose parts are not secret and may be common words.

Finding the runs without trying every substring: the 8-character substrings of
every form (its *grams*) and its 4-character ones (*probes*) are kept in two
sets. A run of 8 or more characters always contains a probe that starts at a
multiple of 5, so the text is probed every 5 characters; around a hit the
8-character windows are looked up in the grams and a run found is extended
window by window both ways. The union of those windows is exactly the union of
every matching run: a scan costs about one lookup per 5 characters of text when
nothing matches, and the two sets grow by about 9 entries per character of secret
(hence :meth:`SecretMask.discard`, for tokens that are superseded).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

MASK = "***"
#: The shortest piece of a secret that is masked on its own.
MIN_RUN = 8
#: Shorter secrets are not registered at all: masking 3 characters everywhere would
#: garble every text, and such a value protects nothing.
MIN_SECRET = 4
_PROBE = 4
_STRIDE = MIN_RUN - _PROBE + 1


def forms(secret: str) -> set[str]:
    """The secret and the forms it takes on the wire (percent-encoded, base64 at every
    alignment, standard and URL-safe)."""
    found = {secret, quote(secret, safe=""), quote_plus(secret)}
    raw = secret.encode("utf-8")
    for skip in range(3):
        if len(raw) > skip:
            found.add(base64.b64encode(raw[skip:]).decode("ascii"))
            found.add(base64.urlsafe_b64encode(raw[skip:]).decode("ascii"))
    return found


class SecretMask:
    """The registered secrets, with their grams and probes counted (two secrets may share
    one), so that a secret can be forgotten again (an OAuth2 token superseded).

    Not locked: :mod:`shared.logging` serialises :meth:`add` and :meth:`discard`;
    :meth:`mask` only looks up, which a concurrent change cannot break (at worst a
    secret being added is not yet masked: it is registered before it is used).
    """

    def __init__(self) -> None:
        self._secrets: set[tuple[str, bool]] = set()
        self._grams: dict[str, int] = {}
        self._probes: dict[str, int] = {}
        self._wholes: dict[str, int] = {}
        self.whole: re.Pattern[str] | None = None

    def __len__(self) -> int:
        return len(self._secrets)

    def copy(self) -> SecretMask:
        """An independent mask with the same secrets."""
        other = SecretMask()
        other._secrets = set(self._secrets)
        other._grams, other._probes = dict(self._grams), dict(self._probes)
        other._wholes, other.whole = dict(self._wholes), self.whole
        return other

    def add(self, secret: str, *, identifier: bool = False) -> None:
        """Mask ``secret`` from now on (nothing happens under 4 characters, or twice)."""
        if len(secret) < MIN_SECRET or (secret, identifier) in self._secrets:
            return
        self._secrets.add((secret, identifier))
        self._count(secret, identifier, +1)

    def discard(self, secret: str, *, identifier: bool = False) -> None:
        """Stop masking ``secret`` (a secret no longer in use); unknown ones are ignored."""
        if (secret, identifier) in self._secrets:
            self._secrets.discard((secret, identifier))
            self._count(secret, identifier, -1)

    def _count(self, secret: str, identifier: bool, step: int) -> None:
        grams: set[str] = set()
        probes: set[str] = set()
        wholes: set[str] = set()
        for form in _forms_of(secret, identifier):
            if identifier or len(form) < MIN_RUN:
                wholes.add(form)
            else:
                grams.update(_substrings(form, MIN_RUN))
                probes.update(_substrings(form, _PROBE))
        # probes first when adding, grams first when removing: a lookup that finds a
        # probe may find no gram, never the other way round
        order = ((self._probes, probes), (self._grams, grams)) if step > 0 \
            else ((self._grams, grams), (self._probes, probes))
        for counts, keys in (*order, (self._wholes, wholes)):
            for key in keys:
                left = counts.get(key, 0) + step
                if left > 0:
                    counts[key] = left
                else:
                    counts.pop(key, None)
        if wholes:
            ordered = sorted(self._wholes, key=len, reverse=True)
            self.whole = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def mask(self, text: str) -> str:
        """``text`` with every secret, every 8+ character piece of one and of its
        forms replaced by ``***``."""
        spans = self.spans(text) if self._grams and len(text) >= MIN_RUN else []
        whole = self.whole
        if whole is not None and whole.search(text):
            spans += [match.span() for match in whole.finditer(text)]
        if not spans:
            return text
        parts, end = [], 0
        for start, stop in _merged(sorted(spans)):
            parts += [text[end:start], MASK]
            end = stop
        parts.append(text[end:])
        return "".join(parts)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """``(start, end)`` of the runs of 8+ characters whose every window is a gram,
        in order (two may touch or overlap)."""
        grams, probes = self._grams, self._probes
        hits = [probe for probe in range(0, len(text) - _PROBE + 1, _STRIDE)
                if text[probe:probe + _PROBE] in probes]
        runs: list[tuple[int, int]] = []
        last_window = len(text) - MIN_RUN
        done = 0  # windows before this one are in a run found, or are not grams
        for probe in hits:
            for start in range(max(probe - _PROBE, done), min(probe, last_window) + 1):
                if start < done or text[start:start + MIN_RUN] not in grams:
                    continue
                first = last = start
                while first > done and text[first - 1:first - 1 + MIN_RUN] in grams:
                    first -= 1
                while last < last_window and text[last + 1:last + 1 + MIN_RUN] in grams:
                    last += 1
                done = last + 1
                runs.append((first, last + MIN_RUN))
        return runs


def _forms_of(secret: str, identifier: bool) -> set[str]:
    if identifier:
        return {secret, quote(secret, safe=""), quote_plus(secret)}
    return {form for form in forms(secret)
            if len(form) >= MIN_RUN or not _is_base64_piece(form, secret)}


def _is_base64_piece(form: str, secret: str) -> bool:
    """A short base64 form (not the secret itself nor its percent-encoding): masking
    4 to 7 characters of base64 everywhere would hit innocent text."""
    return form not in (secret, quote(secret, safe=""), quote_plus(secret))


def _substrings(text: str, length: int) -> Iterator[str]:
    return (text[i:i + length] for i in range(len(text) - length + 1))


def _merged(spans: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Sorted spans, those that touch or overlap joined."""
    current: tuple[int, int] | None = None
    for start, end in spans:
        if current is not None and start <= current[1]:
            current = (current[0], max(current[1], end))
            continue
        if current is not None:
            yield current
        current = (start, end)
    if current is not None:
        yield current
