"""Both sides of the demo as a user would look at them: the sandbox BSS's API and the
Acme CRM's, and how far the CRM has caught up with the BSS.

The Acme connector (``connectors/acme-crm.json``) sends each BSS record's id as the
CRM record's ``bssId``: that is how a CRM record is matched to its BSS record here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx

#: The demo's organization and its instance of the Acme connector (demo/installation.json).
ORG = "acme-telecom"
INSTANCE = "acme-crm-prod"
#: BSS entity → the Acme CRM collection its records become.
COLLECTIONS = {"account": "companies", "contact": "people", "case": "tickets"}
ENTITIES = tuple(COLLECTIONS)
Record = dict[str, Any]


class Bss:
    """The sandbox BSS's record API for one organization."""

    def __init__(self, url: str, org: str) -> None:
        self.url = url
        self.org = org
        self.http = httpx.Client(base_url=url, timeout=30.0)

    def close(self) -> None:
        self.http.close()

    def _path(self, entity: str, record_id: str | None = None) -> str:
        return f"/organizations/{self.org}/{entity}" + (f"/{record_id}" if record_id else "")

    def records(self, entity: str) -> list[Record]:
        """Every (not deleted) record of ``entity``, following the cursor."""
        found: list[Record] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if cursor:
                params["cursor"] = cursor
            page = self._ok(self.http.get(self._path(entity), params=params)).json()
            found.extend(page["items"])
            cursor = page.get("nextCursor")
            if not cursor:
                return found

    def get(self, entity: str, record_id: str) -> Record:
        return self._ok(self.http.get(self._path(entity, record_id))).json()

    def patch(self, entity: str, record_id: str, changes: Record) -> Record:
        return self._ok(self.http.patch(
            self._path(entity, record_id), json=changes,
            headers={"Content-Type": "application/merge-patch+json"})).json()

    def delete(self, entity: str, record_id: str) -> None:
        self._ok(self.http.delete(self._path(entity, record_id)))

    @staticmethod
    def _ok(response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            raise RuntimeError(f"the sandbox BSS answered {response.status_code} to "
                               f"{response.request.method} {response.request.url.path}: "
                               f"{response.text[:300]}")
        return response


class Crm:
    """The Acme CRM stand-in, read whole (json-server's ``GET /db``)."""

    def __init__(self, url: str, api_key: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10.0, headers={"X-Api-Key": api_key})

    def close(self) -> None:
        self.http.close()

    def state(self) -> dict[str, list[Record]]:
        response = self.http.get("/db")
        response.raise_for_status()
        return response.json()

    def companies(self) -> list[Record]:
        """The CRM's companies, lowest id first."""
        return sorted(self.state().get("companies", []), key=lambda c: c["id"])

    def patch(self, collection: str, record_id: int, changes: Record) -> Record:
        """Change a CRM record through the CRM's API, as its own users would."""
        response = self.http.patch(f"/{collection}/{record_id}", json=changes)
        response.raise_for_status()
        return response.json()

    def by_bss_id(self, entity: str, state: dict[str, list[Record]] | None = None) -> (
            dict[str, Record]):
        """The CRM records of ``entity``'s collection, by the BSS id they carry."""
        items = (state or self.state()).get(COLLECTIONS[entity], [])
        return {item["bssId"]: item for item in items if item.get("bssId")}


@dataclasses.dataclass(frozen=True)
class EntitySync:
    """One entity's state: BSS records, CRM records, and how many of the BSS's are there."""

    entity: str
    bss: int
    crm: int
    synced: int

    @property
    def complete(self) -> bool:
        return self.bss == self.synced == self.crm


def compare(bss: Bss, crm: Crm) -> list[EntitySync]:
    """How far the CRM has caught up with the BSS, per entity."""
    state = crm.state()
    result = []
    for entity in ENTITIES:
        ids = {record["id"] for record in bss.records(entity)}
        there = crm.by_bss_id(entity, state)
        result.append(EntitySync(entity, len(ids), len(state.get(COLLECTIONS[entity], [])),
                                 len(ids & there.keys())))
    return result
