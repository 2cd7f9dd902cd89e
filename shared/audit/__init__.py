"""The audit log: one row per processing outcome (docs/architecture.md §6).

``AuditRecord`` is the row; an ``AuditSink`` makes it durable. The PostgreSQL
sink (``shared.audit.writer.AuditWriter``) groups rows from concurrent handlers
into one commit; ``write`` returns only after the commit holding the row.
"""

from shared.audit.record import FINAL_OUTCOMES, OUTCOMES, AuditRecord, AuditSink, Outcome

__all__ = ["FINAL_OUTCOMES", "OUTCOMES", "AuditRecord", "AuditSink", "Outcome"]
