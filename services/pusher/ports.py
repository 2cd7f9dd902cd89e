"""What the pusher needs of the world: its ports (cosmicpython's abstractions).

``RecordPush`` and ``PushHandler`` talk to PostgreSQL, the BSS, the third party and
the clock only through these ``Protocol``s, and use nothing of the real adapters
beyond them. The adapters satisfy them as they are — ``LinkStore``
(shared.storage.links), ``BssClient`` (shared.bss), ``ThirdPartyClient``
(shared.http), ``InstanceContext`` / ``InstanceRegistry`` (shared.runtime), the
audit writer (``shared.audit.writer.AuditWriter``) — and so do the in-memory fakes of
``tests/unit/pusher/fakes.py``;
``tests/unit/pusher/test_ports.py`` checks both against every signature here.

A port lists what the push *uses*, not everything an adapter offers: a method
added here must be one the pipeline calls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

from shared.audit import AuditRecord, Outcome
from shared.connector import ConnectorDocument
from shared.connector.openapi import Operation
from shared.connector.request import RequestPlan
from shared.http import Response
from shared.storage.links import Claim, Link, PushMark
from shared.transform import LinkLookup, TransformContext

if TYPE_CHECKING:
    from services.pusher.outcome import PushOutcome


class Links(Protocol):
    """The link table, push side (``shared.storage.links.LinkStore``).

    Raises ``InfrastructureError`` when the store fails; ``mark_linked`` raises
    ``LinkConflict`` when the external id is linked to another record.
    """

    async def claim_for_create(self, instance_id: str, entity: str, bss_id: str,
                               message_id: str, stale_after: float | timedelta) -> Claim:
        """Claim the record for ``message_id`` and return its link as it stands; ``owned``
        is false while another message holds a claim younger than ``stale_after``."""
        ...

    async def forget_claim(self, claim: Claim, message_id: str) -> None:
        """Undo a claim that led to nothing (a row it created is removed)."""
        ...

    async def pulls_creating(self, instance_id: str, entity: str,
                             stale_after: float | timedelta) -> bool:
        """Whether a pull is creating a BSS ``entity`` record for the instance right now
        (a claim by external id with no BSS id yet, younger than ``stale_after``)."""
        ...

    async def release_claim(self, instance_id: str, entity: str, message_id: str, *,
                            bss_id: str | None = None, external_id: str | None = None,
                            error: str | None = None) -> bool:
        """Give back the claim of ``message_id``, remembering ``error`` (redacted)."""
        ...

    async def note_create_sent(self, instance_id: str, entity: str, bss_id: str,
                               message_id: str, sent: dict[str, Any]) -> bool:
        """Record durably, before a create goes out, that it is sent and what it sends;
        false (nothing written) when another message holds the claim or none does."""
        ...

    async def note_steps_done(self, instance_id: str, entity: str, bss_id: str,
                              message_id: str, *, external_id: str,
                              done: dict[str, Any]) -> bool:
        """Link the record durably to ``external_id``, which a create's steps made, and
        keep ``done`` (step → captures) until a push links or deletes it; the claim
        stays. False (nothing written) when another message holds the claim or none
        does; ``LinkConflict`` when the id is linked to another record."""
        ...

    async def clear_create_sent(self, instance_id: str, entity: str, bss_id: str,
                                message_id: str) -> bool:
        """Forget the pending create (it made no remote record), if ``message_id`` holds
        the claim."""
        ...

    async def mark_linked(self, instance_id: str, entity: str, *, bss_id: str,
                          external_id: str, direction: Literal["push", "pull"],
                          push_hash: str | None = None, pull_hash: str | None = None,
                          pushed: PushMark | None = None) -> Link:
        """Store the pair and the hash pushed (``None`` keeps the stored one) and the
        push mark (``None`` keeps it); clear the claim, the error and a pending create."""
        ...

    async def mark_deleted(self, instance_id: str, entity: str, *,
                           direction: Literal["push", "pull"], bss_id: str | None = None,
                           external_id: str | None = None,
                           pushed: PushMark | None = None) -> bool:
        """The record was deleted on the other side: state ``deleted``, hashes and a
        pending create cleared, the push mark replaced (``None`` keeps it)."""
        ...

    async def external_ids(self, instance_id: str, entity: str,
                           bss_ids: Iterable[str]) -> dict[str, str]:
        """``{bss_id: external_id}`` of those records that are linked."""
        ...

    async def linked(self, instance_id: str, entity: str,
                     bss_ids: Iterable[str]) -> dict[str, Link]:
        """``{bss_id: link}`` of those records that are linked."""
        ...

    async def bss_ids(self, instance_id: str, entity: str,
                      external_ids: Iterable[str]) -> dict[str, str]:
        """``{external_id: bss_id}`` of those records that are linked."""
        ...


class BssRecords(Protocol):
    """Reading the host BSS (``shared.bss.BssClient``)."""

    async def get(self, org_id: str, entity: str, record_id: str) -> dict[str, Any] | None:
        """The record, ``None`` when the BSS does not have it. Raises ``BssUnavailable``,
        ``BssRejected``."""
        ...

    async def aclose(self) -> None:
        """Close the connections (at shutdown)."""
        ...


class ThirdParty(Protocol):
    """One instance's server (``shared.http.ThirdPartyClient``)."""

    @property
    def base_url(self) -> str:
        """The instance's server URL, which request plans are built against."""
        ...

    async def send(self, plan: RequestPlan, *, accept: Collection[int] = ()) -> Response:
        """The answer below 400 (or with a status in ``accept`` and a JSON body), or the
        ``shared.errors`` error its status or failure means (``shared.http.outcome``)."""
        ...


class RequestChecker(Protocol):
    """Request-schema checks (``shared.connector.payloads.PayloadChecker``). Pure."""

    def request_errors(self, operation: Operation, body: Any) -> list[str]:
        """Readable violations of the operation's request schema (empty when valid)."""
        ...


class InstanceView(Protocol):
    """What the push reads of an instance (``shared.storage.instances.Instance``)."""

    @property
    def id(self) -> str: ...

    @property
    def org_id(self) -> str: ...

    @property
    def connector_id(self) -> str: ...

    @property
    def enabled(self) -> bool: ...

    def is_permitted(self, entity: str, direction: str, action: str) -> bool: ...

    def permitted_actions(self, entity: str, direction: str) -> list[str]: ...

    def conflict_override(self, entity: str) -> str | None: ...


class PushTarget(Protocol):
    """The instance a record is pushed to (``shared.runtime.InstanceContext``)."""

    @property
    def instance(self) -> InstanceView: ...

    @property
    def connector(self) -> ConnectorDocument: ...

    @property
    def client(self) -> ThirdParty: ...

    @property
    def checker(self) -> RequestChecker: ...

    def transform_context(self, links: LinkLookup | None) -> TransformContext:
        """What transforms and templates see: lookups, variables and ``links``."""
        ...


class Instances(Protocol):
    """Where the handler finds instances (``shared.runtime.InstanceRegistry``)."""

    async def get(self, instance_id: str) -> PushTarget | None:
        """The instance, ``None`` when it does not exist. Raises ``ConfigurationError``."""
        ...

    async def aclose(self) -> None:
        """Close every instance's client (at shutdown)."""
        ...


class AuditLog(Protocol):
    """Audit rows the handler writes itself: those of parents pushed first."""

    async def write(self, record: AuditRecord) -> None:
        """Return once ``record`` is committed. Raises ``InfrastructureError``."""
        ...

    async def final_outcome(self, message_id: str) -> Outcome | None:
        """The last final outcome (``FINAL_OUTCOMES``) recorded for this message at any
        attempt, ``None`` when it has none (a ``failed`` row is not final). Raises
        ``InfrastructureError``."""
        ...


class ParentPusher(Protocol):
    """Pushes a parent record first, inline; the handler implements it (and audits it)."""

    async def push_parent(self, ctx: PushTarget, entity: str, record_id: str,
                          org_id: str, depth: int, *, child_message_id: str) -> PushOutcome:
        ...


class Clock(Protocol):
    """Time as the push waits on it (a parent another delivery is pushing)."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary start, never going back."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds``."""
        ...


class SystemClock:
    """The real clock (the one adapter small enough to live beside its port)."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
