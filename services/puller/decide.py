"""What to do with one external record for one instance (pure; docs/architecture.md §5).

The BSS action follows from what the third party shows (the record, or that it is
deleted), its link (never linked, linked, deleted in the BSS by us) and what the
instance may do — not from the message's action: an ``update`` of a record never
linked is a create, a ``create`` of a record linked since (a redelivery) an update.

A linked record whose BSS counterpart is gone (deleted in the BSS) is not created
again by a pull: the delete is the BSS's newer word, and its push carries it out.

An update of a linked record is then compared with the last sync (``compare``): the
third party shows what the link says was last synced, or what the BSS holds already
→ nothing to write (the loop guard: a record we pushed, listed again); only the third
party changed → update; both sides changed → a conflict, for the object's policy
(``services.pusher.conflict``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

CREATE, UPDATE, DELETE, SKIP = "create", "update", "delete", "skip"
UNCHANGED, IN_STEP, CONFLICT = "unchanged", "in-step", "conflict"
#: The BSS changed the record; the third party shows it otherwise but did not modify it.
BSS_ONLY = "bss-only"
BSS_ONLY_REASON = ("the BSS changed the record since the last sync; the third party shows "
                   "it otherwise but has not modified it since (its modification time): "
                   "the BSS's version is pushed")
#: Why a pull that finds the BSS holding the record's values writes nothing.
IN_STEP_REASON = ("the BSS holds these values already (a record pushed from the BSS and "
                  "listed again, or the same change made on both sides)")


@dataclasses.dataclass(frozen=True)
class PullDecision:
    action: str  # create | update | delete | skip
    reason: str | None = None  # why, when skipping

    @property
    def skipped(self) -> bool:
        return self.action == SKIP


def decide(*, deleted: bool, linked: bool, permitted: Collection[str], entity: str,
           bss_exists: bool = True) -> PullDecision:
    """The BSS action for one external record.

    ``deleted``: the third party shows the record as deleted (tombstone, delete message).
    ``linked``: the record is linked to a BSS record in this instance.
    ``bss_exists``: that BSS record is still there (only meaningful when ``linked``).
    ``permitted``: the instance's pull permissions for the entity.
    """
    if deleted:
        if not linked:
            return PullDecision(SKIP, f"the external {entity} is deleted and was never "
                                      "synchronized to the BSS")
        if not bss_exists:
            return PullDecision(SKIP, f"the external {entity} is deleted and its BSS record "
                                      "is gone already")
        return _allowed(DELETE, permitted, entity)
    if linked:
        if not bss_exists:
            return PullDecision(SKIP, f"the linked BSS {entity} was deleted in the BSS; a "
                                      "pull does not bring it back")
        return _allowed(UPDATE, permitted, entity)
    return _allowed(CREATE, permitted, entity)


def _allowed(action: str, permitted: Collection[str], entity: str) -> PullDecision:
    if action not in permitted:
        return PullDecision(SKIP, f"the instance is not permitted to {action} {entity} "
                                  "records (pull)")
    return PullDecision(action)


def compare(*, external_changed: bool, bss_holds: bool, bss_changed: bool,
            modified_since: bool = True) -> str:
    """What the update of a linked record comes to.

    ``external_changed``: the canonical entity hashes otherwise than the link's
    ``pull_hash`` (what was last synced, in pull terms). ``bss_holds``: the BSS record
    holds the canonical entity already (writing it would change nothing).
    ``bss_changed``: the BSS record changed since the last sync (its push payload hashes
    otherwise than the link's ``push_hash``). ``modified_since``: the external record's
    modification time does not rule out a change since the last sync.

    ``unchanged`` (the third party shows what was synced) · ``in-step`` (it shows what
    the BSS holds: nothing to write, the link's pull hash is brought up to date) ·
    ``update`` · ``conflict`` (both changed: the policy decides) · ``bss-only`` (the
    BSS changed; the third party shows the record in another shape but did not modify
    it: nothing to write, the BSS's push follows).
    """
    if not external_changed:
        return UNCHANGED
    if bss_holds:
        return IN_STEP
    if bss_changed:
        return CONFLICT if modified_since else BSS_ONLY
    return UPDATE
