"""PostgreSQL storage (docs/architecture.md §6): the pool, migrations and one store per concept.

    Database            the pool; psycopg failures become InfrastructureError here
    upgrade             versioned plain-SQL migrations (shared/storage/migrations)
    OrganizationStore   organizations
    ConnectorStore      connector documents, every content version kept
    InstanceStore       instances with permissions (Instance.is_permitted)
    ScheduleStore       most-specific-wins schedules
    LinkStore           BSS id <-> external id per record, claims, hashes
    CursorStore         incremental listing cursors
    RunStore            scheduled and manual runs
"""

from shared.storage.connectors import ConnectorStore, StoredConnector
from shared.storage.cursors import CursorStore
from shared.storage.db import Database
from shared.storage.instances import Instance, InstanceStore
from shared.storage.links import Claim, Link, LinkConflict, LinkStore
from shared.storage.migrate import MigrationError, upgrade
from shared.storage.organizations import Organization, OrganizationStore
from shared.storage.partitions import ensure_audit_partitions
from shared.storage.runs import Run, RunStore
from shared.storage.schedules import EffectiveSchedule, ScheduleStore

__all__ = [
    "Claim",
    "ConnectorStore",
    "CursorStore",
    "Database",
    "EffectiveSchedule",
    "Instance",
    "InstanceStore",
    "Link",
    "LinkConflict",
    "LinkStore",
    "MigrationError",
    "Organization",
    "OrganizationStore",
    "Run",
    "RunStore",
    "ScheduleStore",
    "StoredConnector",
    "ensure_audit_partitions",
    "upgrade",
]
