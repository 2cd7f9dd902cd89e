"""Transform throughput: a realistic account mapping, records per second on one core.

The mapping has 20 target fields, a nested billing address, 2 lookups and one
$externalId, like a CRM company. Prints figures; asserts nothing.

    .venv/bin/python bench/transform.py [--records N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from shared.transform import LookupTable, PreloadedLinks, TransformContext, build_transform

ROOT = Path(__file__).resolve().parents[1]

MAPPING = {
    "map": {
        "name": "name",
        "accountNumber": "code",
        "legalName": "companyName",
        "website": "$lowercase(webSite)",
        "phone": "phone",
        "email": "email",
        "vatId": "vatNumber",
        "industry": "$lookup('industry', industry, 'OTHER')",
        "kind": "$lookup('accountType', type)",
        "currency": "currency",
        "employees": "numberOfEmployees",
        "revenue": "annualRevenue",
        "description": "description",
        "billingAddress.street": "addresses[isBilling][0].line1",
        "billingAddress.city": "addresses[isBilling][0].city",
        "billingAddress.postalCode": "addresses[isBilling][0].postalCode",
        "billingAddress.country": "addresses[isBilling][0].countryCode",
        "parentCompanyId": "$externalId('account', parentAccountId)",
        "bssId": "id",
        "updatedAt": "updatedAt",
    }
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    args = parser.parse_args()

    record = json.loads((ROOT / "tests" / "data" / "entities" / "account.json").read_text())
    transform = build_transform("AccountToCompany", MAPPING)
    assert len(transform.fields) == 20
    context = TransformContext(
        lookups={
            "industry": LookupTable("industry", {"Transportation": "LOGISTICS"}),
            "accountType": LookupTable("accountType", {"customer": "CUSTOMER"}),
        },
        links=PreloadedLinks(external={("account", record["parentAccountId"]): "1001"}),
    )
    # Different records each time, as in production (no cache can help).
    records = []
    for i in range(1000):
        variant = dict(record)
        variant["id"] = f"acc-{i}"
        variant["name"] = f"{record['name']} {i}"
        records.append(variant)

    sample = transform.apply(records[0], context)
    for _ in range(500):  # warm-up
        transform.apply(records[0], context)
    start = time.perf_counter()
    cpu_start = time.process_time()
    for i in range(args.records):
        transform.apply(records[i % len(records)], context)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    print(f"sample payload: {json.dumps(sample)[:160]}...")
    print(f"transform: {args.records} records in {elapsed:.2f} s "
          f"= {args.records / elapsed:,.0f} records/s "
          f"({elapsed / args.records * 1e6:.0f} µs/record, {cpu / elapsed:.0%} of one core)")
    print("target: >= 3,000 records/s on one core")


if __name__ == "__main__":
    main()
