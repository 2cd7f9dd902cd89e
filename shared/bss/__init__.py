"""The host BSS: its API client (``schemas/bss-api.openapi.json``)."""

from shared.bss.client import BssClient, Page, Versioned

__all__ = ["BssClient", "Page", "Versioned"]
