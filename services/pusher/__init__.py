"""The pusher service (docs/architecture.md §2)."""
