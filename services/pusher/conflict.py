"""A record changed on both sides since its last sync: who wins (pure; docs/architecture.md
§5, *Loop guard and conflicts*).

The link remembers the last sync in each side's own terms: ``push_hash`` is the hash
of what the BSS record made for the third party (the push payload), ``pull_hash`` the
hash of the canonical entity the third party's record made. A side *changed* when
what it holds now hashes otherwise. Both changed is a conflict, decided by the
object's ``conflict`` policy, which an instance may override (installation file,
``conflict``):

    bss-wins       the BSS's version stays and is pushed; the pull is skipped
    external-wins  the third party's version is pulled; the push is skipped
    newest-wins    the side modified last (the BSS record's ``updatedAt``, the external
                   record's ``pull.list.incremental.cursorField``); ties, or a time
                   that cannot be read, go to the BSS

The pusher and the puller both ask, from the same inputs, so they agree: whichever
runs first does what the winner needs, and the other finds nothing left to do.

A third party may show one record in several shapes (HubSpot's read returns other
properties than its search listing): its hash then differs from the link's without a
change. So a conflict also needs the external record modified after the last sync
(``modified_since``) when its modification time says so precisely.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

from shared.connector import SyncObject
from shared.connector.paging import field_format, read_time
from shared.connector.source import resolve_pointer

BSS_WINS, EXTERNAL_WINS, NEWEST_WINS = "bss-wins", "external-wins", "newest-wins"
POLICIES = (BSS_WINS, EXTERNAL_WINS, NEWEST_WINS)
BSS, EXTERNAL = "bss", "external"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Who won a conflict, under which policy, and why (for the audit row)."""

    winner: str  # bss | external
    policy: str
    why: str

    @property
    def external_wins(self) -> bool:
        return self.winner == EXTERNAL

    def details(self) -> dict[str, str]:
        """The audit row's ``details.conflict``."""
        return {"policy": self.policy, "winner": self.winner, "why": self.why}


def policy_for(obj: SyncObject, override: str | None) -> str:
    """The policy in force: the instance's override for the entity, else the object's."""
    return override if override in POLICIES else obj.conflict


def resolve(policy: str, *, bss_modified: datetime | None,
            external_modified: datetime | None) -> Verdict:
    """The winner of a conflict under ``policy``; the modification times matter only
    for ``newest-wins``."""
    if policy == EXTERNAL_WINS:
        return Verdict(EXTERNAL, policy, "the policy is external-wins")
    if policy != NEWEST_WINS:
        return Verdict(BSS, BSS_WINS, "the policy is bss-wins")
    if bss_modified is None or external_modified is None:
        missing = "the BSS record's" if bss_modified is None else "the external record's"
        return Verdict(BSS, policy, f"newest-wins, but {missing} modification time is "
                                    "unknown: the BSS wins")
    shown = (f"BSS updatedAt {_iso(bss_modified)}, external modified "
             f"{_iso(external_modified)}")
    if external_modified > bss_modified:
        return Verdict(EXTERNAL, policy, f"newest-wins: the external record is newer ({shown})")
    if external_modified == bss_modified:
        return Verdict(BSS, policy, f"newest-wins: modified at the same time, a tie goes to "
                                    f"the BSS ({shown})")
    return Verdict(BSS, policy, f"newest-wins: the BSS record is newer ({shown})")


def bss_modified(record: dict[str, Any] | None) -> datetime | None:
    """When the BSS record was last modified (its ``updatedAt``)."""
    return instant(record.get("updatedAt")) if isinstance(record, dict) else None


def external_modified(obj: SyncObject, record: dict[str, Any] | None, *,
                      precise: bool = False) -> datetime | None:
    """When the external record was last modified: its value at the object's
    ``pull.list.incremental.cursorField`` (``None``: not declared, absent or unreadable;
    with ``precise``, also a time given as a date only)."""
    if obj.pull_list is None or not isinstance(record, dict):
        return None
    incremental = obj.pull_list.option("incremental") or {}
    pointer = incremental.get("cursorField")
    if not pointer or (precise and field_format(obj.pull_list) == "date"):
        return None
    try:
        value = resolve_pointer(record, pointer)
    except (KeyError, ValueError):
        return None
    return instant(value, field_format(obj.pull_list))


def modified_since(modified: datetime | None, synced: Iterable[datetime | None]) -> bool:
    """Whether the external record may have been modified after the last sync (the
    latest of ``synced``, the link's push and pull stamps): yes unless both times are
    known and it was modified at or before that sync."""
    last = max((t for t in synced if t is not None), default=None)
    return modified is None or last is None or modified > last


def instant(value: Any, fmt: str = "iso8601") -> datetime | None:
    """A modification time as a UTC datetime (``shared.connector.paging.read_time``)."""
    return read_time(value, fmt)


def _iso(at: datetime | date) -> str:
    return at.isoformat().replace("+00:00", "Z")
