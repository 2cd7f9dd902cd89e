"""Realistic, schema-valid record bodies for the seed command; pure (a seeded rng, no I/O).

Records hang together: contacts work for their account and use its e-mail
domain, documents are in the account's currency and bill its address, line
totals add up (``total = quantity * unitPrice * (1 - discount/100)``,
``tax = total * taxRate/100``, rounded half-up to cents) to the document's
subtotal, tax and total, payments settle an invoice of their account,
subscriptions are to recurring products.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sandbox.fake import (
    CASES,
    CATALOG,
    COUNTRIES,
    INDUSTRIES,
    JOB_TITLES,
    NAME_WORDS,
    VARIANTS,
    CatalogItem,
    Country,
    address,
    money,
    phone,
    slug,
)

Record = dict[str, Any]
#: Account codes ``C-000000`` … ``C-999999`` in a scrambled order (a bijection: the
#: multiplier is coprime to 10**6), then ``C-1000000`` onwards.
_CODE_SPACE = 10**6
_CODE_MULTIPLIER = 738_137
_CODE_OFFSET = 104_729
_BY_CODE = {c.code: c for c in COUNTRIES}
_OWNERS = ("m.durand", "s.keller", "j.smith", "a.rossi", "l.garcia", "e.jansen")
_VAT = {"FR": ("FR", 11), "DE": ("DE", 9), "GB": ("GB", 9), "ES": ("ESB", 8), "NL": ("NL", 9)}
_VARIANT_PRICE = {"": 1.0, "Business": 1.3, "Pro": 1.6, "Enterprise": 2.4, "Starter": 0.7,
                  "Plus": 1.15}


class RecordFactory:
    """Builds one record body at a time; the same seed and ``today`` give the same records."""

    def __init__(self, rng: random.Random, today: date) -> None:
        self.rng = rng
        self.today = today

    # ------------------------------------------------------------------ entities

    def product(self, index: int) -> Record:
        """The ``index``-th product: catalog items, then their tiers (Business, Pro…)."""
        item = CATALOG[index % len(CATALOG)]
        round_ = index // len(CATALOG)
        variant = VARIANTS[round_ % len(VARIANTS)]
        suffix = f"-{variant[:3].upper()}" if variant else ""
        if round_ >= len(VARIANTS):
            suffix += f"-{round_ // len(VARIANTS) + 1}"
        price = money(item.price * _VARIANT_PRICE[variant])
        return {
            "sku": item.sku + suffix,
            "name": f"{item.name} {variant}".strip(),
            "description": f"{item.name} ({item.category.lower()}), billed per {item.unit}.",
            "type": item.type,
            "category": item.category,
            "active": self.rng.random() > 0.05,
            "unitPrice": float(price),
            "costPrice": float(money(item.cost * _VARIANT_PRICE[variant])),
            "currency": "EUR",
            "taxRate": 20,
            "taxCode": "STANDARD",
            "unit": item.unit,
            "billingType": item.billing_type,
            "billingPeriod": item.billing_period,
            "trialPeriodDays": self.rng.choice([None, 14, 30]) if item.type == "digital" else None,
            "tags": [item.category.lower()],
        }

    def account(self, index: int) -> Record:
        """An account whose code is :func:`account_code` of ``index`` (distinct indices,
        distinct codes)."""
        rng = self.rng
        country = rng.choice(COUNTRIES)
        industry = rng.choice(list(INDUSTRIES))
        name = f"{rng.choice(NAME_WORDS)} {rng.choice(INDUSTRIES[industry])}"
        domain = f"{slug(name)}.{country.tld}"
        employees = rng.choice([8, 25, 60, 140, 420, 1200, 5400])
        addresses = [address(rng, country, label="Headquarters")]
        if employees > 100 and rng.random() < 0.5:
            addresses[0]["isShipping"] = False
            addresses.append(address(rng, country, kind="shipping", label="Warehouse",
                                     billing=False, shipping=True))
        return {
            "name": name,
            "code": account_code(index),
            "companyName": f"{name} {country.company_suffix}",
            "type": rng.choices(["customer", "prospect", "partner", "reseller"], [80, 10, 5, 5])[0],
            "status": rng.choices(["active", "inactive", "suspended"], [90, 7, 3])[0],
            "webSite": f"www.{domain}",
            "email": f"accounts@{domain}",
            "phone": phone(rng, country),
            "vatNumber": self._vat(country),
            "registrationNumber": f"{rng.randrange(10**9):09d}",
            "industry": industry,
            "currency": country.currency,
            "language": country.language,
            "timezone": country.timezone,
            "description": f"{industry} customer with {employees} employees in "
                           f"{addresses[0]['city']}.",
            "numberOfEmployees": employees,
            "annualRevenue": float(employees * rng.randint(80, 240) * 1000),
            "paymentTermsDays": rng.choice([15, 30, 30, 45, 60]),
            "creditLimit": float(rng.choice([5000, 10000, 25000, 50000, 100000])),
            "taxExempt": False,
            "owner": rng.choice(_OWNERS),
            "addresses": addresses,
            "tags": sorted(set(rng.sample(["key-account", "smb", "enterprise", "public-sector",
                                           "multi-site", "upsell"], 2))),
            "customValues": {"segment": "Enterprise" if employees > 500 else "SMB",
                             "slaLevel": rng.randint(1, 3), "onboarded": rng.random() < 0.8},
        }

    def contact(self, account: Record | None) -> Record:
        rng = self.rng
        country = country_of(account) if account else rng.choice(COUNTRIES)
        first, last = rng.choice(country.first_names), rng.choice(country.last_names)
        domain = _domain(account) if account else f"mail.{country.tld}"
        title, department = rng.choice(JOB_TITLES)
        return {
            "salutation": rng.choice(["Mr", "Ms", "Dr", None]),
            "firstName": first,
            "lastName": last,
            "jobTitle": title,
            "department": department,
            "accountId": account["id"] if account else None,
            "isPrimary": rng.random() < 0.3,
            "status": "active",
            "email": f"{slug(first)}.{slug(last)}@{domain}",
            "phone": phone(rng, country),
            "mobile": phone(rng, country),
            "language": country.language,
            "timezone": country.timezone,
            "address": address(rng, country, kind="work") if rng.random() < 0.4 else None,
            "marketingOptIn": rng.random() < 0.5,
            "doNotCall": rng.random() < 0.1,
            "tags": ["billing-contact"] if department == "Finance" else None,
        }

    def order(self, account: Record, contact: Record | None, products: list[Record]) -> Record:
        rng = self.rng
        ordered = self.today - timedelta(days=rng.randint(1, 180))
        status = rng.choices(["draft", "confirmed", "in_progress", "fulfilled", "cancelled"],
                             [10, 25, 15, 45, 5])[0]
        lines, subtotal, tax = self._lines(products, rng.randint(1, 4))
        discount = money(subtotal * Decimal("0.05")) if rng.random() < 0.2 else Decimal("0.00")
        shipping = Decimal("15.00") if rng.random() < 0.3 else Decimal("0.00")
        body: Record = {
            "number": f"SO-{ordered.year}-{rng.randrange(10**5):05d}",
            "accountId": account["id"],
            "contactId": contact["id"] if contact else None,
            "status": status,
            "orderDate": ordered.isoformat(),
            "requestedDeliveryDate": (ordered + timedelta(days=rng.randint(3, 30))).isoformat(),
            "confirmedAt": _stamp(ordered, 1) if status not in ("draft", "cancelled") else None,
            "fulfilledAt": _stamp(ordered, rng.randint(2, 20)) if status == "fulfilled" else None,
            "cancelledAt": _stamp(ordered, 2) if status == "cancelled" else None,
            "purchaseOrderNumber": f"PO-{rng.randrange(10**5):05d}" if rng.random() < 0.5
            else None,
            "currency": account.get("currency") or "EUR",
            "lines": lines,
            "subtotal": float(subtotal),
            "discountAmount": float(discount),
            "shippingAmount": float(shipping),
            "tax": float(tax),
            "total": float(subtotal - discount + shipping + tax),
            "paymentTermsDays": account.get("paymentTermsDays"),
            "billingAddress": _billing_address(account),
            "shippingAddress": _shipping_address(account),
        }
        return body

    def invoice(self, account: Record, contact: Record | None, order: Record | None,
                products: list[Record]) -> Record:
        rng = self.rng
        issued = self.today - timedelta(days=rng.randint(0, 120))
        terms = account.get("paymentTermsDays") or 30
        if order and order.get("lines"):
            lines = [dict(line) for line in order["lines"]]
            subtotal = money(sum(Decimal(str(line["total"])) for line in lines))
            tax = money(sum(Decimal(str(line["tax"])) for line in lines))
        else:
            lines, subtotal, tax = self._lines(products, rng.randint(1, 4))
        total = subtotal + tax
        due = issued + timedelta(days=terms)
        status = rng.choices(["draft", "issued", "paid", "partially_paid", "overdue"],
                             [5, 30, 45, 10, 10])[0]
        if status == "issued" and due < self.today:
            status = "overdue"
        paid = {"paid": total, "partially_paid": money(total / 2)}.get(status, Decimal("0.00"))
        return {
            "number": f"INV-{issued.year}-{rng.randrange(10**5):05d}",
            "type": "invoice",
            "accountId": account["id"],
            "contactId": contact["id"] if contact else None,
            "orderId": order["id"] if order else None,
            "status": status,
            "issueDate": issued.isoformat(),
            "dueDate": due.isoformat(),
            "periodStart": issued.replace(day=1).isoformat(),
            "periodEnd": _month_end(issued).isoformat(),
            "paidAt": _stamp(issued, rng.randint(1, terms)) if status == "paid" else None,
            "purchaseOrderNumber": order.get("purchaseOrderNumber") if order else None,
            "currency": account.get("currency") or "EUR",
            "lines": lines,
            "subtotal": float(subtotal),
            "tax": float(tax),
            "total": float(total),
            "amountPaid": float(paid),
            "balance": float(total - paid),
            "paymentTermsDays": terms,
            "billingAddress": _billing_address(account),
        }

    def payment(self, invoice: Record | None, account: Record) -> Record:
        """A payment of ``invoice`` (its paid amount, else its total), or one held on account."""
        rng = self.rng
        if invoice is not None:
            amount = invoice.get("amountPaid") or invoice.get("total") or 0
            currency = invoice.get("currency") or "EUR"
            paid_on = date.fromisoformat(invoice["issueDate"]) + timedelta(days=rng.randint(1, 40))
        else:
            amount, currency = 0, account.get("currency") or "EUR"
            paid_on = self.today - timedelta(days=rng.randint(1, 90))
        if amount <= 0:
            amount = float(money(rng.uniform(50, 2000)))
        method = rng.choice(["card", "bank_transfer", "bank_transfer", "direct_debit"])
        return {
            "number": f"PAY-{rng.randrange(10**6):06d}",
            "accountId": account["id"],
            "invoiceId": invoice["id"] if invoice else None,
            "amount": amount,
            "currency": currency,
            "method": method,
            "status": rng.choices(["completed", "pending", "failed"], [85, 10, 5])[0],
            "paymentDate": min(paid_on, self.today).isoformat(),
            "externalReference": f"TX{rng.randrange(16**12):012X}",
            "refundedAmount": 0.0,
            "fee": float(money(Decimal(str(amount)) * Decimal("0.014"))) if method == "card"
            else 0.0,
        }

    def subscription(self, account: Record, product: Record) -> Record:
        rng = self.rng
        start = self.today - timedelta(days=rng.randint(10, 700))
        term = rng.choice([12, 12, 24, 36])
        status = rng.choices(["active", "trial", "suspended", "cancelled"], [80, 8, 4, 8])[0]
        cancelled = status == "cancelled"
        return {
            "number": f"SUB-{rng.randrange(10**6):06d}",
            "accountId": account["id"],
            "productId": product["id"],
            "quantity": float(rng.choice([1, 1, 2, 5, 10, 25])),
            "status": status,
            "startDate": start.isoformat(),
            "endDate": (start + timedelta(days=rng.randint(30, 300))).isoformat()
            if cancelled else None,
            "trialEndDate": (start + timedelta(days=30)).isoformat() if status == "trial"
            else None,
            "renewalDate": _add_months(start, term).isoformat(),
            "nextBillingDate": None if cancelled else _next_month(self.today).isoformat(),
            "billingPeriod": product.get("billingPeriod") or "monthly",
            "termMonths": term,
            "autoRenew": rng.random() < 0.8,
            "unitPrice": product.get("unitPrice"),
            "discount": rng.choice([None, 0, 5, 10]),
            "currency": account.get("currency") or "EUR",
            "cancelledAt": _stamp(start, 30) if cancelled else None,
            "cancellationReason": "Moved to a competitor" if cancelled else None,
        }

    def case(self, account: Record | None, contact: Record | None) -> Record:
        rng = self.rng
        subject, category, kind, description = rng.choice(CASES)
        opened = self.today - timedelta(days=rng.randint(0, 60))
        status = rng.choices(["new", "open", "pending", "resolved", "closed"],
                             [10, 30, 15, 20, 25])[0]
        done = status in ("resolved", "closed")
        return {
            "number": f"CS-{rng.randrange(10**6):06d}",
            "subject": subject,
            "description": description,
            "accountId": account["id"] if account else None,
            "contactId": contact["id"] if contact else None,
            "status": status,
            "priority": rng.choices(["low", "normal", "high", "urgent"], [20, 50, 22, 8])[0],
            "type": kind,
            "category": category,
            "origin": rng.choice(["email", "phone", "web", "portal"]),
            "assignee": rng.choice(_OWNERS),
            "team": "Billing" if category == "Billing" else "Technical support",
            "openedAt": _stamp(opened, 0),
            "dueAt": _stamp(opened, 3),
            "resolvedAt": _stamp(opened, rng.randint(1, 5)) if done else None,
            "closedAt": _stamp(opened, 6) if status == "closed" else None,
            "resolution": "Fixed and confirmed with the customer." if done else None,
        }

    # ------------------------------------------------------------------ pieces

    def _lines(self, products: list[Record], count: int) -> tuple[list[Record], Decimal,
                                                                  Decimal]:
        """``count`` priced lines; their subtotal and tax."""
        lines: list[Record] = []
        for position in range(1, count + 1):
            product = self.rng.choice(products) if products else None
            lines.append(self._line(position, product or _catalog_product(self.rng)))
        subtotal = money(sum(Decimal(str(line["total"])) for line in lines))
        tax = money(sum(Decimal(str(line["tax"])) for line in lines))
        return lines, subtotal, tax

    def _line(self, position: int, product: Record) -> Record:
        quantity = self.rng.choice([1, 1, 1, 2, 3, 5, 10])
        unit_price = Decimal(str(product.get("unitPrice") or 10))
        discount = self.rng.choice([None, None, None, 5, 10])
        rate = Decimal(str(product.get("taxRate") or 20))
        total = money(quantity * unit_price * (1 - Decimal(discount or 0) / 100))
        tax = money(total * rate / 100)
        return {
            "position": position,
            "productId": product.get("id"),
            "sku": product.get("sku"),
            "description": product["name"],
            "quantity": quantity,
            "unit": product.get("unit"),
            "unitPrice": float(unit_price),
            "discount": discount,
            "taxRate": float(rate),
            "tax": float(tax),
            "total": float(total),
        }

    def _vat(self, country: Country) -> str | None:
        prefix, digits = _VAT.get(country.code, (None, 0))
        if prefix is None:
            return None
        return prefix + "".join(str(self.rng.randint(0, 9)) for _ in range(digits))


# ---------------------------------------------------------------------- helpers


def country_of(account: Record) -> Country:
    """The country of an account's first address (France when it has none)."""
    for item in account.get("addresses") or []:
        code = item.get("countryCode")
        if code in _BY_CODE:
            return _BY_CODE[code]
    return _BY_CODE["FR"]


def account_code(index: int) -> str:
    """The ``index``-th account code (``index >= 0``): different indices never share a code.

    Unique by construction, not by luck: drawing six random digits gave 45 duplicates
    among 10,000 accounts, and an organization's account codes must be unique (the
    pusher matches companies by them). The first million look random (``C-104729``, ``C-842866``…);
    later ones have seven digits or more.
    """
    if index < _CODE_SPACE:
        return f"C-{(index * _CODE_MULTIPLIER + _CODE_OFFSET) % _CODE_SPACE:06d}"
    return f"C-{index:07d}"


def _domain(account: Record) -> str:
    site = account.get("webSite") or "www.example.com"
    return site.removeprefix("www.")


def _billing_address(account: Record) -> Record | None:
    found = [a for a in account.get("addresses") or [] if a.get("isBilling")]
    return dict(found[0]) if found else None


def _shipping_address(account: Record) -> Record | None:
    found = [a for a in account.get("addresses") or [] if a.get("isShipping")]
    return dict(found[0]) if found else _billing_address(account)


def _catalog_product(rng: random.Random) -> Record:
    item: CatalogItem = rng.choice(CATALOG)
    return {"name": item.name, "sku": item.sku, "unit": item.unit, "unitPrice": item.price,
            "taxRate": 20}


def _stamp(day: date, plus_days: int) -> str:
    moment = datetime.combine(day + timedelta(days=plus_days), time(9, 30), UTC)
    return moment.isoformat().replace("+00:00", "Z")


def _month_end(day: date) -> date:
    return _next_month(day) - timedelta(days=1)


def _next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def _add_months(day: date, months: int) -> date:
    month = day.month - 1 + months
    return date(day.year + month // 12, month % 12 + 1, min(day.day, 28))
