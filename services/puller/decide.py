"""What to do with one external record for one instance (pure; docs/architecture.md §5).

The BSS action follows from what the third party shows (the record, or that it is
deleted), its link (never linked, linked, deleted in the BSS by us) and what the
instance may do — not from the message's action: an ``update`` of a record never
linked is a create, a ``create`` of a record linked since (a redelivery) an update.

A linked record whose BSS counterpart is gone (deleted in the BSS) is not created
again by a pull: the delete is the BSS's newer word, and its push carries it out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

CREATE, UPDATE, DELETE, SKIP = "create", "update", "delete", "skip"


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
