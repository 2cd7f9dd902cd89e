"""What the mutation tests of the pinned fast checks share: the documents on which a
check and jsonschema disagree."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shared.errors import InvalidMessage
from shared.schema_check import PinnedSchemaCheck


def disagreements(check: PinnedSchemaCheck, docs: Iterable[Any]) -> list[Any]:
    """The documents ``check`` accepts and jsonschema refuses, or the other way round."""
    differ = []
    for doc in docs:
        try:
            check.check(doc)
            accepted = True
        except InvalidMessage:
            accepted = False
        if accepted != check.validator.is_valid(doc):
            differ.append(doc)
    return differ
