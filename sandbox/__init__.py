"""The sandbox BSS: a reference implementation of ``schemas/bss-api.openapi.json``.

A small Starlette app over PostgreSQL (its own schema) that serves the 8 canonical
entities and publishes entity-changed events to ``bss.events`` through a
transactional outbox. The stand-in for the host BSS in the demo and the
end-to-end tests; see ``sandbox/README.md``.

Public surface: :func:`create_app`, :class:`SandboxSettings`, :class:`SandboxServer`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "1.0.0"
__all__ = ["SandboxServer", "SandboxSettings", "__version__", "create_app"]

if TYPE_CHECKING:
    from sandbox.app import create_app
    from sandbox.server import SandboxServer
    from sandbox.settings import SandboxSettings


def __getattr__(name: str) -> Any:
    """Import the public names lazily, so ``python -m sandbox`` starts fast."""
    if name == "create_app":
        from sandbox.app import create_app

        return create_app
    if name == "SandboxServer":
        from sandbox.server import SandboxServer

        return SandboxServer
    if name == "SandboxSettings":
        from sandbox.settings import SandboxSettings

        return SandboxSettings
    raise AttributeError(name)
