"""BSS records for the end-to-end tests, and what the Acme CRM must hold for them.

Bodies come from the sandbox's own :class:`~sandbox.factory.RecordFactory` (realistic,
schema-valid), with account codes made unique per test: the Acme connector matches
companies by ``accountNumber`` before creating one, so two accounts sharing a code
would rightly end up as one company.

:func:`expected_company` and :func:`expected_person` are the oracle: the mapping of
``connectors/acme-crm.json`` (``AccountToCompany``, ``ContactToPerson``) written out
by hand in Python — not computed by the transform engine under test. Only the lookup
tables are read from the connector document (they are data).
"""

from __future__ import annotations

import json
import random
import secrets
from datetime import date
from functools import cache
from typing import Any

from demo.thirdparty import REPO
from sandbox.factory import RecordFactory

Record = dict[str, Any]
ACME_CONNECTOR = REPO / "connectors" / "acme-crm.json"


def factory(seed: int | None = None) -> RecordFactory:
    return RecordFactory(random.Random(seed), date(2025, 6, 30))


def account_bodies(count: int, *, seed: int | None = None) -> list[Record]:
    """``count`` account bodies with codes unique to this call (``E2E-<run>-<n>``)."""
    make = factory(seed)
    run = secrets.token_hex(3).upper()
    bodies = []
    for i in range(count):
        body = make.account(i)
        body["code"] = f"E2E-{run}-{i:04d}"
        bodies.append(body)
    return bodies


def contact_bodies(accounts: list[Record], per_account: int, *,
                   seed: int | None = None) -> list[Record]:
    """``per_account`` contacts for each stored account (they carry its ``id``)."""
    make = factory(seed)
    return [make.contact(account) for account in accounts for _ in range(per_account)]


# --------------------------------------------------------------------------- the oracle


@cache
def _lookups() -> dict[str, dict[str, str]]:
    tables = json.loads(ACME_CONNECTOR.read_text())["x-synchronization"]["lookups"]
    return {name: table.get("values", table) for name, table in tables.items()}


def expected_company(account: Record) -> Record:
    """The Acme company ``AccountToCompany`` makes of a BSS account (None: absent)."""
    lookups = _lookups()
    billing = next((a for a in account.get("addresses") or [] if a.get("isBilling")), None)
    website = account.get("webSite")
    address = None
    if billing is not None:
        address = {"street": billing.get("line1"), "street2": billing.get("line2"),
                   "city": billing.get("city"), "region": billing.get("state"),
                   "postalCode": billing.get("postalCode"),
                   "country": billing.get("countryCode")}
    return {
        "name": account["name"],
        "accountNumber": account.get("code"),
        "legalName": account.get("companyName"),
        "website": website.lower() if website else None,
        "phone": account.get("phone"),
        "email": account.get("email"),
        "vatId": account.get("vatNumber"),
        "industry": lookups["industry"].get(account.get("industry"), "OTHER"),
        "kind": lookups["accountType"].get(account.get("type")),
        "currency": account.get("currency"),
        "employees": account.get("numberOfEmployees"),
        "billingAddress": address,
        "bssId": account["id"],
    }


def expected_person(contact: Record, company_id: Any) -> Record:
    """The Acme person ``ContactToPerson`` makes of a BSS contact whose account is the
    company ``company_id`` in Acme."""
    return {
        "firstName": contact.get("firstName"),
        "lastName": contact["lastName"],
        "email": contact.get("email"),
        "phone": contact.get("phone"),
        "mobile": contact.get("mobile"),
        "jobTitle": contact.get("jobTitle"),
        "companyId": None if company_id is None else str(company_id),
        "primary": contact.get("isPrimary"),
        "bssId": contact["id"],
    }


def _strip(value: Any) -> Any:
    """``value`` without None members (absent and null are the same to the comparison)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if v is not None}
    return value


def mapping_differences(expected: Record, actual: Record) -> list[str]:
    """Mapped fields where ``actual`` (what Acme holds) differs from ``expected``."""
    problems = []
    for key, want in _strip(expected).items():
        have = actual.get(key)
        if key == "companyId" and have is not None:
            have = str(have)
        if _strip(have) != want:
            problems.append(f"{key}: expected {want!r}, Acme has {have!r}")
    for key in expected:
        if expected[key] is None and actual.get(key) is not None:
            problems.append(f"{key}: expected nothing, Acme has {actual[key]!r}")
    return problems
