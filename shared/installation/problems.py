"""The error that lists what is wrong with an installation file.

Each problem is a :class:`shared.connector.problems.Problem` — a JSON pointer, its
file and line, one sentence — as for connector documents, so that the problems of
an installation file and of the connectors it names read alike. A problem never
quotes a credential value.
"""

from __future__ import annotations

from shared.connector.problems import Problem
from shared.errors import ConfigurationError


class InstallationInvalid(ConfigurationError):
    """The installation file (or a connector it names) has problems; ``problems`` lists all."""

    def __init__(self, problems: list[Problem]) -> None:
        count = len(problems)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in the installation: "
                         + "; ".join(p.format() for p in problems[:3])
                         + ("; …" if count > 3 else ""))
        self.problems = problems
