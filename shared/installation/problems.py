"""What is wrong with an installation file: located problems, and the error that lists them.

A problem never quotes a credential value.
"""

from __future__ import annotations

import dataclasses

from shared.errors import ConfigurationError


@dataclasses.dataclass(frozen=True, slots=True)
class InstallationProblem:
    """One located problem: ``file:line: /pointer: sentence``."""

    pointer: str
    message: str
    file: str | None = None
    line: int | None = None

    def format(self) -> str:
        where = (self.file or "<installation>") + (f":{self.line}" if self.line else "")
        return f"{where}: {self.pointer or '/'}: {self.message}"

    def __str__(self) -> str:
        return self.format()


class InstallationInvalid(ConfigurationError):
    """The installation file (or a connector it names) has problems; ``problems`` lists all."""

    def __init__(self, problems: list[InstallationProblem]) -> None:
        count = len(problems)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in the installation: "
                         + "; ".join(p.format() for p in problems[:3])
                         + ("; …" if count > 3 else ""))
        self.problems = problems
