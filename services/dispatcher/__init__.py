"""The dispatcher service (docs/architecture.md §2)."""
