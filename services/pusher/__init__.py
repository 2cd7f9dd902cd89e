"""The pusher service (DESIGN §2)."""
