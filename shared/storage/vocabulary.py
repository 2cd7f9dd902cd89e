"""The closed sets of words the tables' CHECK constraints also spell (docs/architecture.md §1)."""

from __future__ import annotations

ENTITIES = ("account", "contact", "order", "invoice", "product", "payment", "case", "subscription")
DIRECTIONS = ("push", "pull")
ACTIONS = ("create", "update", "delete")
#: Ids of organizations, instances and connectors travel in routing keys: no dots.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
