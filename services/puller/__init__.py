"""The puller service (docs/architecture.md §2)."""
