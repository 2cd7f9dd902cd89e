"""The closed sets of words the tables' CHECK constraints also spell (docs/architecture.md §1).

The eight entities are :data:`shared.schemas.ENTITIES` (one list for the whole project).
"""

from __future__ import annotations

DIRECTIONS = ("push", "pull")
ACTIONS = ("create", "update", "delete")
#: Ids of organizations, instances and connectors travel in routing keys: no dots.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
