"""The puller service (DESIGN §2)."""
