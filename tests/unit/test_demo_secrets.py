"""The demo's own API key must not garble the demo's output.

Masking covers every 8-character piece of a secret (``shared.secret_mask``): a key
sharing a piece with an identifier (the old ``demo-acme-crm-key`` holds
``acme-crm``) turned ``acme-crm-prod`` into ``***prod`` in every log line and message.
"""

from __future__ import annotations

import json
from pathlib import Path

from demo.run import ACME_CRM_API_KEY
from shared.secret_mask import SecretMask

REPO = Path(__file__).resolve().parents[2]


def _identifiers() -> list[str]:
    installation = json.loads((REPO / "demo" / "installation.json").read_text())
    names = [c["id"] for c in installation["connectors"]]
    for org in installation["organizations"]:
        names.append(org["id"])
        for instance in org["instances"]:
            names += [instance["id"], instance["server"], *instance["permissions"]]
    return names


def test_the_demo_key_masks_none_of_the_demo_identifiers() -> None:
    mask = SecretMask()
    mask.add(ACME_CRM_API_KEY)
    identifiers = _identifiers()
    assert "acme-crm-prod" in identifiers
    assert [mask.mask(name) for name in identifiers] == identifiers
    assert mask.mask(f"X-Api-Key: {ACME_CRM_API_KEY}") != f"X-Api-Key: {ACME_CRM_API_KEY}"


def test_the_old_demo_key_would_have_masked_them() -> None:
    mask = SecretMask()
    mask.add("demo-acme-crm-key")
    assert mask.mask("acme-crm-prod") != "acme-crm-prod"
