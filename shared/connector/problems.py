"""A problem found in a document: where it is and one plain sentence saying what is wrong."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Problem:
    """One located finding. ``pointer`` is a JSON pointer into ``file`` (or the bundle)."""

    pointer: str
    message: str
    file: str | None = None
    line: int | None = None
    severity: str = "error"  # or "warning"

    def located(self, file: str | None, line: int | None, pointer: str | None = None) -> Problem:
        """The same problem, placed in a source file."""
        return dataclasses.replace(
            self, file=file, line=line, pointer=self.pointer if pointer is None else pointer
        )

    def format(self) -> str:
        """``file:line: /pointer: sentence`` — the form editors and CI logs understand."""
        where = self.file or "<document>"
        if self.line is not None:
            where += f":{self.line}"
        pointer = self.pointer or "/"
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{where}: {pointer}: {prefix}{self.message}"


class DocumentInvalid(Exception):
    """A connector document (or the files it is made of) has problems; ``problems`` lists all."""

    def __init__(self, problems: list[Problem]) -> None:
        errors = [p for p in problems if p.severity == "error"]
        super().__init__(
            f"{len(errors)} problem(s)" + (f": {errors[0].format()}" if errors else "")
        )
        self.problems = problems
