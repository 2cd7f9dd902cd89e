"""Where the language-neutral contracts (``schemas/``) live.

In a source checkout (editable install) they are beside the package; in a wheel
they are packaged as ``shared/_schemas``.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
#: The environment variable naming another schemas directory.
SCHEMAS_ENV = "BSS_SYNC_SCHEMAS"


def schemas_dir() -> Path:
    """The directory holding ``*.schema.json`` and ``bss-api.openapi.json``."""
    override = os.environ.get(SCHEMAS_ENV)
    if override:
        return Path(override)
    packaged = _PACKAGE_DIR / "_schemas"
    if packaged.is_dir():
        return packaged
    return _PACKAGE_DIR.parent / "schemas"


def project_root() -> Path:
    """The source checkout's root (only meaningful in a checkout)."""
    return _PACKAGE_DIR.parent
