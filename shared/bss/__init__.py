"""The host BSS: its API client (``schemas/bss-api.openapi.json``)."""

from shared.bss.client import BssClient, Page

__all__ = ["BssClient", "Page"]
