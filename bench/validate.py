"""Validation time of a large vendor spec (about 1 MB) with its connector overlay.

HubSpot publishes one spec per CRM object; this builds a realistic ~1 MB document
from the published companies spec by repeating its paths for other objects
(deals, tickets, products…, as HubSpot's other specs are), then times
``check_connector`` on it with the HubSpot overlay. Prints figures; asserts nothing.

HubSpot's specs are the vendor's, not in the repository: the folder holding
``hubspot-crm-companies-v3.json`` and ``hubspot-crm-contacts-v3.json`` (downloaded
from the URLs in ``connectors/hubspot-crm.overlay.json``'s ``extends`` and
``x-extends``) comes from ``--vendor-specs`` or ``VENDOR_SPECS``.

    VENDOR_SPECS=DIR .venv/bin/python bench/validate.py [--target-bytes N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from shared.connector import check_connector

ROOT = Path(__file__).resolve().parents[1]
OVERLAY = ROOT / "connectors" / "hubspot-crm.overlay.json"
COMPANIES = "hubspot-crm-companies-v3.json"
CONTACTS = "hubspot-crm-contacts-v3.json"
OBJECTS = ["deals", "tickets", "products", "line_items", "quotes", "calls", "emails", "meetings",
           "notes", "tasks", "orders", "carts", "invoices", "payments", "subscriptions", "leads",
           "goals", "listings", "projects", "services", "courses", "appointments"]


def big_spec(companies_file: Path, target_bytes: int) -> dict:
    companies = json.loads(companies_file.read_text())
    text = json.dumps(companies["paths"])
    paths = dict(companies["paths"])
    names = OBJECTS + [f"{name}_v2" for name in OBJECTS] + [f"custom_{i}" for i in range(100)]
    for name in names:
        if len(json.dumps({**companies, "paths": paths}, indent=2)) >= target_bytes:
            break
        paths.update(json.loads(text.replace("companies", name).replace("companyId", "objectId")))
    return {**companies, "paths": paths}


def missing_specs(folder: Path | None) -> str | None:
    """``None`` when ``folder`` holds both specs, else one line saying how to provide them."""
    if folder is not None and (folder / COMPANIES).is_file() and (folder / CONTACTS).is_file():
        return None
    overlay = json.loads(OVERLAY.read_text())
    where = f"not in {folder}" if folder is not None else "not given"
    return (f"bench/validate.py: HubSpot's published specs are {where}: pass --vendor-specs DIR "
            f"or set VENDOR_SPECS to a folder holding {COMPANIES} and {CONTACTS}, downloaded "
            f"from {overlay['extends']} and {overlay['x-extends'][0]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-bytes", type=int, default=1_000_000)
    parser.add_argument(
        "--vendor-specs", type=Path, default=os.environ.get("VENDOR_SPECS") or None,
        metavar="DIR", help="folder of HubSpot's published specs (default: $VENDOR_SPECS)")
    args = parser.parse_args()
    problem = missing_specs(args.vendor_specs)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "hubspot-crm-large.json"
        spec.write_text(json.dumps(big_spec(args.vendor_specs / COMPANIES, args.target_bytes),
                                   indent=2))
        contacts = args.vendor_specs / CONTACTS
        size = spec.stat().st_size + contacts.stat().st_size
        timings = []
        for _ in range(3):
            start = time.perf_counter()
            document, problems = check_connector([spec, contacts], OVERLAY)
            timings.append(time.perf_counter() - start)
        assert document is not None, [p.format() for p in problems]
        operations = len({op.key for op in document.operations.values()})
        print(f"validate: {size / 1e6:.2f} MB of vendor spec ({operations} operations) + overlay: "
              f"best {min(timings):.2f} s, worst {max(timings):.2f} s over 3 runs")
        print("target: under 3 s for a 1 MB vendor spec")
    return 0


if __name__ == "__main__":
    sys.exit(main())
