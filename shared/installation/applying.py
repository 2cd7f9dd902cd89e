"""From an installation file to the database: load it (read, validate, resolve), then sync.

:func:`load_installation` needs no database, so ``bss-sync apply`` reports a bad
file before connecting; :func:`apply` is both steps for callers that have a
database at hand.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from shared.credentials import credentials_dir as default_credentials_dir
from shared.installation.connectors import check_permitted_entities, load_connectors
from shared.installation.desired import desired_state
from shared.installation.file import read_file
from shared.installation.problems import InstallationInvalid
from shared.installation.validation import validate
from shared.storage.config_sync import Change, DesiredState, sync
from shared.storage.db import Database


@dataclasses.dataclass(frozen=True, slots=True)
class ApplyReport:
    """What ``apply`` changed (or, with ``dry_run``, would change)."""

    path: str
    changes: list[Change]
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def lines(self) -> list[str]:
        """One line per change, or one saying nothing changed."""
        if not self.changes:
            return ["no changes"]
        return [str(c) for c in self.changes]


async def apply(db: Database, path: str | Path, *, dry_run: bool = False,
                credentials_dir: str | Path | None = None) -> ApplyReport:
    """Make the database match the installation file at ``path``.

    Raises :class:`InstallationInvalid` (nothing written) when the file or a
    connector it names has problems, ``InfrastructureError`` on database failure.
    """
    desired = load_installation(path, credentials_dir=credentials_dir)
    changes = await sync(db, desired, dry_run=dry_run)
    return ApplyReport(str(path), changes, dry_run)


def load_installation(path: str | Path, *,
                      credentials_dir: str | Path | None = None) -> DesiredState:
    """Read, validate and resolve the file (connectors loaded). Raises ``InstallationInvalid``.

    Every problem is reported at once: the installation file's first, in line
    order, then the connector files'. ``file:`` references must name a file in
    ``credentials_dir``, by default ``CREDENTIALS_DIR`` (``SettingsInvalid`` when
    that variable is unusable).
    """
    path = Path(path)
    data, line_of = read_file(path)
    if credentials_dir is None:
        credentials_dir = default_credentials_dir()
    problems = validate(data, line_of, str(path), credentials_dir=credentials_dir)
    connectors: dict[str, Any] = {}
    if isinstance(data, dict):
        connectors, connector_problems = load_connectors(data, path, line_of)
        problems += connector_problems
        problems += check_permitted_entities(data, connectors, line_of, str(path))
    if problems:
        problems.sort(key=lambda p: (p.file != str(path), p.file or "", p.line or 0))
        raise InstallationInvalid(problems)
    return desired_state(data, connectors)
