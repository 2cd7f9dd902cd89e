"""The dispatcher service (DESIGN §2)."""
