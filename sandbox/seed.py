"""Seed an organization with N realistic records per entity, through the normal write path.

Records are created with :meth:`RecordStore.create`, exactly as the API creates
them: validated against the canonical schemas, and each with its ``created``
event in the outbox (a running sandbox's relay publishes them). Entities are
created parents first (products, accounts, contacts, orders, invoices, payments,
subscriptions, cases) so references point at real records: those created in
this run, or the organization's existing records when an entity is not seeded.

Account codes are unique in the organization by construction: each account gets
the code of its index (:func:`sandbox.factory.account_code`, a bijection), and
indices whose code the organization already holds (an earlier run, a record made
through the API) are skipped.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable, Collection, Sequence
from datetime import date
from typing import Any

from sandbox.factory import Record, RecordFactory, account_code
from sandbox.store import RecordStore, StoredRecord, Write
from shared.schemas import ENTITIES

#: Creation order: every entity after the ones it refers to.
SEED_ORDER: tuple[str, ...] = ("product", "account", "contact", "order", "invoice", "payment",
                               "subscription", "case")
#: The "today" of a seeded (reproducible) run, unless one is given.
SEED_ANCHOR = date(2025, 6, 30)
DEFAULT_CONCURRENCY = 4


class SeedError(Exception):
    """The seed cannot run as asked (an entity needs records that do not exist)."""


class _Pools:
    """Records each entity may refer to: this run's, else the organization's existing ones."""

    def __init__(self, store: RecordStore, org_id: str) -> None:
        self._store = store
        self._org_id = org_id
        self._records: dict[str, list[Record]] = {}

    async def load(self, entity: str) -> list[Record]:
        if entity not in self._records:
            self._records[entity] = await self._store.sample(self._org_id, entity)
        return self._records[entity]

    def replace(self, entity: str, records: list[Record]) -> None:
        self._records[entity] = records


async def seed_organization(
    store: RecordStore,
    org_id: str,
    count: int,
    *,
    entities: Sequence[str] = ENTITIES,
    seed: int | None = None,
    today: date | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Create ``count`` records of each of ``entities`` for ``org_id``; return counts by entity.

    With ``seed`` the records' contents are reproducible (dates relative to
    ``today``, default :data:`SEED_ANCHOR`; without a seed, the real today). Ids are
    assigned by the store, so they differ between runs. The records table is analyzed
    at the end (:mod:`sandbox.statistics`). Raises :class:`SeedError`
    (unknown entity, missing parents), ``InvalidRecord`` (a bug in the factory),
    ``InfrastructureError``.
    """
    unknown = [e for e in entities if e not in ENTITIES]
    if unknown:
        raise SeedError(f"unknown entities: {', '.join(unknown)}; known: {', '.join(ENTITIES)}")
    factory = RecordFactory(random.Random(seed), today or (SEED_ANCHOR if seed is not None
                                                           else date.today()))
    pools = _Pools(store, org_id)
    created: dict[str, int] = {}
    for entity in (e for e in SEED_ORDER if e in entities):
        indices = free_account_indices(await store.account_codes(org_id), count) \
            if entity == "account" else range(count)
        bodies = [await _body(factory, entity, i, pools) for i in indices]
        stored = await _create_all(store, Write(org_id, entity), bodies, concurrency)
        pools.replace(entity, [record.data() for record in stored])
        created[entity] = len(stored)
        if progress is not None:
            progress(entity, len(stored))
    # A bulk load: fresh statistics now, not when autovacuum gets to it (if it does).
    await store.statistics.analyze()
    return created


def free_account_indices(taken: Collection[str], count: int) -> list[int]:
    """The ``count`` smallest indices whose :func:`account_code` is not in ``taken``."""
    free = (i for i in itertools.count() if account_code(i) not in taken)
    return list(itertools.islice(free, count))


async def _create_all(store: RecordStore, write: Write, bodies: list[Record],
                      concurrency: int) -> list[StoredRecord]:
    """Create every body, ``concurrency`` at a time; results in the bodies' order."""
    gate = asyncio.Semaphore(concurrency)

    async def create(body: Record) -> StoredRecord:
        async with gate:
            return await store.create(write, body)

    return list(await asyncio.gather(*(create(body) for body in bodies)))


async def _body(factory: RecordFactory, entity: str, index: int, pools: _Pools) -> Record:
    rng = factory.rng
    if entity == "product":
        return factory.product(index)
    if entity == "account":
        return factory.account(index)
    accounts = await pools.load("account")
    if entity == "contact":
        return factory.contact(rng.choice(accounts) if accounts else None)
    if entity == "case":
        account = rng.choice(accounts) if accounts else None
        return factory.case(account, await _contact_of(pools, account, rng))
    if not accounts:
        raise SeedError(f"{entity} records need accounts: include 'account' in the entities "
                        f"or seed accounts first")
    if entity == "subscription":
        return await _subscription(factory, pools, accounts)
    if entity == "payment":
        return await _payment(factory, pools, accounts)
    order = None
    if entity == "invoice":
        orders = await pools.load("order")
        order = rng.choice(orders) if orders and rng.random() < 0.6 else None
    account = _account(accounts, order["accountId"]) if order else rng.choice(accounts)
    contact = await _contact_of(pools, account, rng)
    products = await pools.load("product")
    if entity == "order":
        return factory.order(account, contact, products)
    return factory.invoice(account, contact, order, products)


async def _subscription(factory: RecordFactory, pools: _Pools,
                        accounts: list[Record]) -> Record:
    products = await pools.load("product")
    if not products:
        raise SeedError("subscription records need products: include 'product' in the "
                        "entities or seed products first")
    recurring = [p for p in products if p.get("billingType") == "recurring"] or products
    return factory.subscription(factory.rng.choice(accounts), factory.rng.choice(recurring))


async def _payment(factory: RecordFactory, pools: _Pools, accounts: list[Record]) -> Record:
    invoices = await pools.load("invoice")
    if invoices:
        invoice = factory.rng.choice(invoices)
        return factory.payment(invoice, _account(accounts, invoice["accountId"]))
    return factory.payment(None, factory.rng.choice(accounts))


def _account(accounts: list[Record], account_id: str) -> Record:
    """The account with ``account_id`` among ``accounts`` (just its id when not loaded)."""
    for account in accounts:
        if account["id"] == account_id:
            return account
    return {"id": account_id}


async def _contact_of(pools: _Pools, account: Record | None,
                      rng: random.Random) -> Record | None:
    if account is None:
        return None
    mine = [c for c in await pools.load("contact") if c.get("accountId") == account["id"]]
    return rng.choice(mine) if mine else None


def summary(created: dict[str, Any]) -> str:
    """``created 5 product, 5 account, …``."""
    return "created " + ", ".join(f"{n} {entity}" for entity, n in created.items())
