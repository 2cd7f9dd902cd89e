"""What one pull did: the value ``RecordPull`` returns and the handler audits."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class PullOutcome:
    """What happened; ``outcome`` is an audit outcome value, ``record_id`` the BSS id."""

    outcome: str  # created | updated | deleted | unchanged | skipped
    record_id: str | None = None
    external_id: str | None = None
    http_status: int | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
