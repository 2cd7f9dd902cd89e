"""In-memory adapters for the puller's ports (``services.puller.ports``): no I/O at all.

The link store, third party, instance registry and audit fakes are the pusher's
(``tests/unit/pusher/fakes.py``: ``FakeLinkStore`` claims by external id as
``LinkStore.claim_external_for_create`` does). Here:

* ``FakeBssWrites`` — ``shared.bss.BssClient`` as the puller uses it: records by
  id with a version (ETag ``"<version>"``), creates keyed by ``Idempotency-Key``
  answered again with the first record (as the sandbox BSS does), ``If-Match``
  refused with ``BssConflict`` when the version moved, every write logged with
  its origin; ``fail_next`` makes the next call raise a given error.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from typing import Any

from shared.bss.client import Versioned
from shared.errors import BssConflict, SyncError


@dataclasses.dataclass(frozen=True)
class Write:
    """One write the BSS received."""

    method: str  # POST | PATCH | DELETE
    entity: str
    record_id: str | None
    origin: str
    idempotency_key: str | None = None
    if_match: str | None = None
    body: dict[str, Any] | None = None


class FakeBssWrites:
    """The BSS's records by (organization, entity, id), with versions."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.versions: dict[tuple[str, str, str], int] = {}
        self.keys: dict[tuple[str, str, str], str] = {}  # idempotency key → record id
        self.writes: list[Write] = []
        self._ids = itertools.count(1)
        self._failures: list[SyncError] = []
        self.closed = False

    # -- for tests ----------------------------------------------------------------------

    def put(self, org_id: str, entity: str, record: dict[str, Any]) -> None:
        key = (org_id, entity, record["id"])
        self.records[key] = copy.deepcopy(record)
        self.versions[key] = self.versions.get(key, 0) + 1

    def bump(self, org_id: str, entity: str, record_id: str) -> None:
        """Someone else wrote the record: its version moves on."""
        self.versions[(org_id, entity, record_id)] += 1

    def fail_next(self, error: SyncError) -> None:
        self._failures.append(error)

    def of(self, org_id: str, entity: str) -> list[dict[str, Any]]:
        return [r for (o, e, _), r in self.records.items() if (o, e) == (org_id, entity)]

    def _fail(self) -> None:
        if self._failures:
            raise self._failures.pop(0)

    def _etag(self, key: tuple[str, str, str]) -> str:
        return f'"{self.versions[key]}"'

    def _check(self, key: tuple[str, str, str], if_match: str | None) -> None:
        if if_match is not None and if_match != self._etag(key):
            raise BssConflict(f"the BSS record changed since it was read: {if_match} is not "
                              f"{self._etag(key)}", http_status=412)

    # -- the port ------------------------------------------------------------------------

    async def read(self, org_id: str, entity: str, record_id: str) -> Versioned | None:
        self._fail()
        key = (org_id, entity, record_id)
        if key not in self.records:
            return None
        return Versioned(copy.deepcopy(self.records[key]), self._etag(key))

    async def create(self, org_id: str, entity: str, record: dict[str, Any], *,
                     origin: str | None, idempotency_key: str | None = None) -> dict[str, Any]:
        self._fail()
        self.writes.append(Write("POST", entity, None, origin, idempotency_key,
                                 body=copy.deepcopy(record)))
        if idempotency_key is not None and (org_id, entity, idempotency_key) in self.keys:
            first = self.keys[(org_id, entity, idempotency_key)]
            return copy.deepcopy(self.records[(org_id, entity, first)])
        record_id = f"bss-{next(self._ids)}"
        self.put(org_id, entity, {**record, "id": record_id})
        if idempotency_key is not None:
            self.keys[(org_id, entity, idempotency_key)] = record_id
        return copy.deepcopy(self.records[(org_id, entity, record_id)])

    async def patch(self, org_id: str, entity: str, record_id: str, changes: dict[str, Any],
                    *, origin: str, if_match: str | None = None) -> Versioned | None:
        self._fail()
        self.writes.append(Write("PATCH", entity, record_id, origin, if_match=if_match,
                                 body=copy.deepcopy(changes)))
        key = (org_id, entity, record_id)
        if key not in self.records:
            return None
        self._check(key, if_match)
        self.put(org_id, entity, {**self.records[key], **changes})
        return Versioned(copy.deepcopy(self.records[key]), self._etag(key))

    async def delete(self, org_id: str, entity: str, record_id: str, *, origin: str,
                     if_match: str | None = None) -> bool:
        self._fail()
        self.writes.append(Write("DELETE", entity, record_id, origin, if_match=if_match))
        key = (org_id, entity, record_id)
        if key not in self.records:
            return False
        self._check(key, if_match)
        del self.records[key]
        return True

    async def aclose(self) -> None:
        self.closed = True
