"""What one push did: the value ``RecordPush`` returns and the handler audits."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class PushOutcome:
    """What happened; ``outcome`` is an audit outcome value."""

    outcome: str  # created | updated | deleted | unchanged | skipped
    external_id: str | None = None
    http_status: int | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
