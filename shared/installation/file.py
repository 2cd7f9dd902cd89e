"""Reading an installation file (JSON or YAML) and finding the line a JSON pointer is on.

The file is read like a connector document (:mod:`shared.connector.source`: one
reader, one line map for every file bss-sync is given), so a YAML date stays the
string it looks like, and a problem is placed on the line of its key.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.connector.source import SourceError, read_source
from shared.installation.problems import InstallationInvalid

LineOf = Callable[[str], int | None]
"""The 1-based line of a JSON pointer (or of its nearest parent), ``None`` when unknown."""


def read_file(path: Path) -> tuple[Any, LineOf]:
    """The parsed file and its pointer→line function.

    Raises :class:`InstallationInvalid` with one located problem when the file is
    missing, is not UTF-8 text, or does not parse.
    """
    try:
        source = read_source(path)
    except SourceError as exc:
        raise InstallationInvalid([exc.problem]) from None
    return source.data, source.line_of
