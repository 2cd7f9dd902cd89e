"""What the puller needs of the world: its ports (as ``services.pusher.ports``).

``RecordPull`` and ``PullHandler`` talk to PostgreSQL, the BSS and the third party
only through these ``Protocol``s. The real adapters satisfy them as they are —
``LinkStore`` (shared.storage.links), ``BssClient`` (shared.bss),
``InstanceContext`` / ``InstanceRegistry`` (shared.runtime) — and so do the fakes
of ``tests/unit/puller/fakes.py`` (``tests/unit/puller/test_ports.py`` checks both).
A port lists what the pull *uses*.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Literal, Protocol

from services.puller.outcome import PullOutcome
from services.pusher.ports import InstanceView, ThirdParty
from shared.audit import AuditRecord
from shared.bss.client import Versioned
from shared.connector import ConnectorDocument, SyncObject
from shared.storage.links import Claim, Link
from shared.transform import LinkLookup, TransformContext

__all__ = ["AuditLog", "BssWrites", "InstanceView", "Instances", "Links", "ParentPuller",
           "PullSource", "ThirdParty"]


class Links(Protocol):
    """The link table, pull side (``shared.storage.links.LinkStore``).

    Raises ``InfrastructureError`` when the store fails; ``mark_linked`` raises
    ``LinkConflict`` when the BSS id is linked to another external record.
    """

    async def claim_external_for_create(self, instance_id: str, entity: str,
                                        external_id: str, message_id: str,
                                        stale_after: float | timedelta) -> Claim:
        """Claim the external record for ``message_id``; its link as it stands."""
        ...

    async def forget_claim(self, claim: Claim, message_id: str) -> None:
        """Undo a claim that led to nothing (a row it created is removed)."""
        ...

    async def release_claim(self, instance_id: str, entity: str, message_id: str, *,
                            bss_id: str | None = None, external_id: str | None = None,
                            error: str | None = None) -> bool:
        """Give back the claim of ``message_id``, remembering ``error`` (redacted)."""
        ...

    async def mark_linked(self, instance_id: str, entity: str, *, bss_id: str,
                          external_id: str, direction: Literal["push", "pull"],
                          push_hash: str | None = None, pull_hash: str | None = None,
                          ) -> Link:
        """Store the pair and the hashes (``None`` keeps the stored one); clear the claim
        and the error."""
        ...

    async def mark_deleted(self, instance_id: str, entity: str, *,
                           direction: Literal["push", "pull"], bss_id: str | None = None,
                           external_id: str | None = None) -> bool:
        """The record was deleted in the BSS by us: state ``deleted``, hashes cleared."""
        ...

    async def bss_ids(self, instance_id: str, entity: str,
                      external_ids: Iterable[str]) -> dict[str, str]:
        """``{external_id: bss_id}`` of those records that are linked."""
        ...

    async def external_ids(self, instance_id: str, entity: str,
                           bss_ids: Iterable[str]) -> dict[str, str]:
        """``{bss_id: external_id}`` of those records that are linked."""
        ...


class BssWrites(Protocol):
    """Reading and writing the host BSS (``shared.bss.BssClient``). Every method raises
    ``BssUnavailable`` (retried) or ``BssRejected`` (dead-lettered); a write given
    ``if_match`` raises ``BssConflict`` (retried) when the record changed since."""

    async def read(self, org_id: str, entity: str, record_id: str) -> Versioned | None:
        """The record and its ETag; ``None`` when the BSS does not have it."""
        ...

    async def create(self, org_id: str, entity: str, record: dict[str, Any], *,
                     origin: str | None, idempotency_key: str | None = None) -> dict[str, Any]:
        """The created record (the first one again for a replayed idempotency key);
        ``origin`` goes on its event (the puller always gives its instance's id)."""
        ...

    async def patch(self, org_id: str, entity: str, record_id: str, changes: dict[str, Any],
                    *, origin: str, if_match: str | None = None) -> Versioned | None:
        """The record merge-patched; ``None`` when it no longer exists."""
        ...

    async def delete(self, org_id: str, entity: str, record_id: str, *, origin: str,
                     if_match: str | None = None) -> bool:
        """Delete the record; ``False`` when it was gone already."""
        ...

    async def aclose(self) -> None:
        """Close the connections (at shutdown)."""
        ...


class PullSource(Protocol):
    """The instance a record is pulled from (``shared.runtime.InstanceContext``)."""

    @property
    def instance(self) -> InstanceView: ...

    @property
    def connector(self) -> ConnectorDocument: ...

    @property
    def client(self) -> ThirdParty: ...

    def transform_context(self, links: LinkLookup | None) -> TransformContext:
        """What transforms and templates see: lookups, variables and ``links``."""
        ...


class Instances(Protocol):
    """Where the handler finds instances (``shared.runtime.InstanceRegistry``)."""

    async def get(self, instance_id: str) -> PullSource | None:
        """The instance, ``None`` when it does not exist. Raises ``ConfigurationError``."""
        ...

    async def aclose(self) -> None:
        """Close every instance's client (at shutdown)."""
        ...


class ParentPuller(Protocol):
    """Pulls a ``$bssId`` parent first, inline; the handler implements it (and audits it)."""

    async def pull_parent(self, ctx: PullSource, obj: SyncObject, external_id: str,
                          org_id: str, depth: int, *, child_message_id: str) -> PullOutcome:
        """The parent's ``PullOutcome``. Raises one of ``shared.errors``."""
        ...


class AuditLog(Protocol):
    """Audit rows the handler writes itself: those of parents pulled first."""

    async def write(self, record: AuditRecord) -> None:
        """Return once ``record`` is committed. Raises ``InfrastructureError``."""
        ...

