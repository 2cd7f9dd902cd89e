"""Validation time of a large vendor spec (about 1 MB) with its connector overlay.

HubSpot publishes one spec per CRM object; this builds a realistic ~1 MB document
from the published companies spec by repeating its paths for other objects
(deals, tickets, products…, as HubSpot's other specs are), then times
``check_connector`` on it with the HubSpot overlay. Prints figures; asserts nothing.

    .venv/bin/python bench/validate.py [--target-bytes N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from shared.connector import check_connector

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT.parent / "shared" / "vendor-specs"
OBJECTS = ["deals", "tickets", "products", "line_items", "quotes", "calls", "emails", "meetings",
           "notes", "tasks", "orders", "carts", "invoices", "payments", "subscriptions", "leads",
           "goals", "listings", "projects", "services", "courses", "appointments"]


def big_spec(target_bytes: int) -> dict:
    companies = json.loads((VENDOR / "hubspot-crm-companies-v3.json").read_text())
    text = json.dumps(companies["paths"])
    paths = dict(companies["paths"])
    names = OBJECTS + [f"{name}_v2" for name in OBJECTS] + [f"custom_{i}" for i in range(100)]
    for name in names:
        if len(json.dumps({**companies, "paths": paths}, indent=2)) >= target_bytes:
            break
        paths.update(json.loads(text.replace("companies", name).replace("companyId", "objectId")))
    return {**companies, "paths": paths}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-bytes", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "hubspot-crm-large.json"
        spec.write_text(json.dumps(big_spec(args.target_bytes), indent=2))
        contacts = VENDOR / "hubspot-crm-contacts-v3.json"
        overlay = ROOT / "connectors" / "hubspot-crm.overlay.json"
        size = spec.stat().st_size + contacts.stat().st_size
        timings = []
        for _ in range(3):
            start = time.perf_counter()
            document, problems = check_connector([spec, contacts], overlay)
            timings.append(time.perf_counter() - start)
        assert document is not None, [p.format() for p in problems]
        operations = len({op.key for op in document.operations.values()})
        print(f"validate: {size / 1e6:.2f} MB of vendor spec ({operations} operations) + overlay: "
              f"best {min(timings):.2f} s, worst {max(timings):.2f} s over 3 runs")
        print("target: under 3 s for a 1 MB vendor spec")


if __name__ == "__main__":
    main()
