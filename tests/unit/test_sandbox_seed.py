"""The sandbox seed's account codes: unique in an organization by construction."""

from __future__ import annotations

import random
from collections import Counter
from datetime import date

from sandbox.factory import RecordFactory, account_code
from sandbox.seed import free_account_indices


def test_twelve_thousand_seeded_accounts_have_distinct_valid_codes() -> None:
    factory = RecordFactory(random.Random(42), date(2025, 6, 30))
    accounts = [factory.account(i) for i in range(12_000)]
    duplicates = {code: n for code, n in Counter(a["code"] for a in accounts).items() if n > 1}
    assert duplicates == {}


def test_account_codes_are_a_bijection_over_the_six_digit_space_and_beyond() -> None:
    first = [account_code(i) for i in range(10**6)]
    assert len(set(first)) == 10**6
    assert {len(code) for code in first} == {len("C-000000")}
    later = [account_code(i) for i in range(10**6, 10**6 + 1000)]
    assert len(set(later)) == 1000 and not set(later) & set(first)


def test_indices_whose_code_is_taken_are_skipped() -> None:
    taken = {account_code(0), account_code(2), "C-hand-made"}
    indices = free_account_indices(taken, 3)
    assert indices == [1, 3, 4]
    assert not {account_code(i) for i in indices} & taken
