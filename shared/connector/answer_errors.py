"""Answers that say "error" with a success status (pure).

Some APIs answer 200 to a request they refused, the refusal in the body
(``{"success": false, "error": {"message": "Invalid email"}}``, ``{"code": 3, …}``). A
call declares how to see it: ``errorPointer`` (a JSON pointer to the error in the
answer: a value there that is true as JSONata reads it — not null, false, 0, "" or
empty — is the error, so ``/code`` works where 0 means success) and/or
``errorWhen`` (a JSONata expression over the answer, true for an error; the message is
then the value at ``errorPointer`` when there is one, else the start of the body). The
client raises ``RemoteRejected`` for such an answer, as for a 4xx: the record is
dead-lettered with the vendor's message instead of being audited ``created``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from shared.connector.source import resolve_pointer
from shared.transform import UNDEFINED, Expression


@dataclasses.dataclass(frozen=True)
class AnswerErrorRule:
    """A call's ``errorPointer`` / ``errorWhen``."""

    pointer: str | None = None
    when: Expression | None = None

    def failure(self, body: Any) -> str | None:
        """The error an answer's ``body`` carries, as text (``""`` when it says nothing
        more than that it failed); ``None`` for an answer that is no error.

        Raises ``ExpressionRuntimeError`` when ``errorWhen`` fails on the answer."""
        found = self._at_pointer(body)
        if self.when is not None:
            verdict = self.when.evaluate(body)
            if verdict is UNDEFINED or not verdict:
                return None
            return _text(found) if _present(found) else ""
        return _text(found) if _present(found) else None

    def _at_pointer(self, body: Any) -> Any:
        if self.pointer is None:
            return None
        try:
            return resolve_pointer(body, self.pointer)
        except (KeyError, ValueError):
            return None

    def describe(self) -> str:
        """What the connector declared, for messages: ``errorWhen 'success = false'``."""
        said = []
        if self.when is not None:
            said.append(f"errorWhen {self.when.source!r}")
        if self.pointer is not None:
            said.append(f"errorPointer {self.pointer!r}")
        return ", ".join(said)


def _present(value: Any) -> bool:
    """True as JSONata reads it: not null, false, 0, "" or empty."""
    return bool(value) if isinstance(value, str | int | float | bool | list | dict) else False


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
