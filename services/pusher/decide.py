"""What to do with one BSS record for one instance (pure; docs/architecture.md §5).

The remote action follows from the record's state in the BSS (still there, or
gone), its link (never linked, linked, deleted remotely by us) and what the
instance may do — not from the event that caused the message: an ``updated``
event for a record never linked is a create, and a ``created`` event for a record
linked since (a redelivery) is an update.

A record gone from the BSS whose create was sent without its answer coming back
(the process died, the answer was lost or unusable) may exist remotely under an id
nobody knows: that is a delete too, which first finds the remote record
(docs/architecture.md §5 step 4), never "never synchronized".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

CREATE, UPDATE, DELETE, SKIP = "create", "update", "delete", "skip"


@dataclasses.dataclass(frozen=True)
class PushDecision:
    action: str  # create | update | delete | skip
    reason: str | None = None  # why, when skipping

    @property
    def skipped(self) -> bool:
        return self.action == SKIP


def decide(*, record_exists: bool, linked: bool, permitted: Collection[str],
           supported: Collection[str], entity: str,
           create_pending: bool = False) -> PushDecision:
    """The push action for one record.

    ``linked``: the record has a live counterpart in the third party.
    ``create_pending``: not linked, but a create of it was sent whose outcome is unknown.
    ``permitted``: the instance's push permissions for the entity.
    ``supported``: the push operations the connector declares for it.
    """
    if not record_exists:
        if not linked and not create_pending:
            return PushDecision(SKIP, f"the {entity} is gone from the BSS and was never "
                                      "synchronized to this instance")
        return _allowed(DELETE, permitted, supported, entity)
    if linked:
        return _allowed(UPDATE, permitted, supported, entity)
    return _allowed(CREATE, permitted, supported, entity)


def _allowed(action: str, permitted: Collection[str], supported: Collection[str],
             entity: str) -> PushDecision:
    if action not in permitted:
        return PushDecision(SKIP, f"the instance is not permitted to {action} {entity} "
                                  "records (push)")
    if action not in supported:
        return PushDecision(SKIP, f"the connector declares no push.{action} for {entity}")
    return PushDecision(action)
