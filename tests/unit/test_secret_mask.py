"""Masking secrets, pieces of them and their encoded forms (shared.secret_mask)."""

from __future__ import annotations

import base64
import random
import string
from urllib.parse import quote

import pytest

from shared.secret_mask import MASK, MIN_RUN, SecretMask, forms

SECRET = "Zq8vN2xLw5TgR7pK3mYc"


def masking(*secrets: str, identifier: bool = False) -> SecretMask:
    made = SecretMask()
    for secret in secrets:
        made.add(secret, identifier=identifier)
    return made


mask = masking(SECRET)


def _shows_no_piece(text: str, secret: str = SECRET) -> bool:
    """No 8-character piece of the secret or of its forms is left in ``text``."""
    return not any(form[i:i + MIN_RUN] in text for form in forms(secret)
                   for i in range(len(form) - MIN_RUN + 1))


def test_the_secret_and_every_piece_of_eight_characters_or_more_are_masked() -> None:
    assert mask.mask(f"key={SECRET}&x=1") == f"key={MASK}&x=1"
    for start in range(len(SECRET) - MIN_RUN + 1):
        for end in range(start + MIN_RUN, len(SECRET) + 1):
            text = f"got '{SECRET[start:end]}' back"
            assert mask.mask(text) == f"got '{MASK}' back", SECRET[start:end]


def test_a_piece_shorter_than_eight_characters_stays() -> None:
    assert mask.mask(f"prefix {SECRET[:7]}!") == f"prefix {SECRET[:7]}!"


@pytest.mark.parametrize("user", ["u", "ab", "api", "someone", "x:"])
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_a_basic_auth_header_echoed_in_an_error_hides_the_password(user: str, encode) -> None:
    secret = "p>w?d~s3cr3t/Ok+_-"  # encodes with + / - _ at some alignment
    masked = masking(secret)
    header = encode(f"{user}:{secret}".encode()).decode()
    text = f'401 {{"detail": "bad credentials in Authorization: Basic {header}"}}'
    out = masked.mask(text)
    assert _shows_no_piece(out, secret), out
    assert out.startswith('401 {"detail": "bad credentials in Authorization: Basic ')


def test_base64_of_the_secret_inside_a_longer_value_at_any_alignment() -> None:
    for prefix in ("", "a", "ab", "abc", "abcd"):
        for suffix in ("", "z", "zy", "zyx"):
            encoded = base64.b64encode(f"{prefix}{SECRET}{suffix}".encode()).decode()
            out = mask.mask(f"token {encoded} end")
            assert _shows_no_piece(out), (prefix, suffix, out)


def test_percent_encoded_secret_is_masked() -> None:
    secret = "a b&c/d=e+f?g"
    out = masking(secret).mask(f"GET /x?key={quote(secret, safe='')}")
    assert out == f"GET /x?key={MASK}"


def test_identifiers_and_short_secrets_are_masked_only_whole() -> None:
    masked = masking("integration-user", identifier=True)
    masked.add("pw12")
    assert masked.mask("as integration-user with pw12") == f"as {MASK} with {MASK}"
    assert masked.mask("an integration test, pw1") == "an integration test, pw1"


def test_secrets_shorter_than_four_characters_are_ignored() -> None:
    assert masking("abc").mask("abc abc") == "abc abc"


def test_text_without_secrets_is_returned_as_is() -> None:
    text = "nothing to see " * 50
    assert mask.mask(text) is text
    assert SecretMask().mask(text) is text


def _naive(secrets: list[str], text: str) -> str:
    """Every substring of 8+ characters of a form, marked by brute force."""
    pieces = {form[i:j] for secret in secrets for form in forms(secret)
              for i in range(len(form)) for j in range(i + MIN_RUN, len(form) + 1)}
    marked = [False] * len(text)
    for i in range(len(text)):
        for j in range(i + MIN_RUN, len(text) + 1):
            if text[i:j] in pieces:
                marked[i:j] = [True] * (j - i)
    out, i = [], 0
    while i < len(text):
        if marked[i]:
            while i < len(text) and marked[i]:
                i += 1
            out.append(MASK)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def test_the_fast_scan_masks_exactly_what_brute_force_finds() -> None:
    rng = random.Random(9)
    alphabet = string.ascii_letters + string.digits + "+/=-_:% "
    for _ in range(300):
        secrets = ["".join(rng.choices(alphabet, k=rng.randint(8, 24)))
                   for _ in range(rng.randint(1, 3))]
        chosen = masking(*secrets)
        pool = [form for secret in secrets for form in forms(secret)]
        parts = []
        for _ in range(rng.randint(1, 6)):
            form = rng.choice(pool)
            start = rng.randrange(len(form))
            parts.append(form[start:start + rng.randint(1, len(form))])
            parts.append("".join(rng.choices(alphabet, k=rng.randint(0, 9))))
        text = "".join(parts)
        assert chosen.mask(text) == _naive(secrets, text), (secrets, text)


def test_a_forgotten_secret_is_shown_again_and_one_sharing_its_pieces_stays_masked() -> None:
    shared = "Aq7wE3rT9yU1iO5p"
    chosen = masking(SECRET, shared + "first", shared + "second")
    chosen.discard(shared + "first")
    assert chosen.mask(f"x {shared}first") == f"x {MASK}first"  # the piece both had
    chosen.discard(shared + "second")
    assert chosen.mask(f"x {shared}first") == f"x {shared}first"
    assert chosen.mask(f"y {SECRET}") == f"y {MASK}"
    chosen.discard(SECRET)
    assert chosen._grams == {} and chosen._probes == {} and len(chosen) == 0


def test_a_copy_is_independent() -> None:
    original = masking(SECRET)
    copy = original.copy()
    copy.add("Pm3nB8vC1xZ6lK4j")
    copy.discard(SECRET)
    assert original.mask(f"{SECRET} Pm3nB8vC1xZ6lK4j") == f"{MASK} Pm3nB8vC1xZ6lK4j"
