"""The installation file: organizations, connectors, instances, permissions, schedules.

A JSON or YAML file (``schemas/installation.schema.json``) applied declaratively
with ``bss-sync apply FILE``: :func:`apply` makes the database match it, and
applying the same file twice changes nothing. Instances and organizations that
disappear from the file are deactivated, never deleted.

Validation reports **every** problem, each with its JSON pointer, its line when
known and one plain sentence, by raising :class:`InstallationInvalid`; nothing is
written then. A problem never quotes a credential value.

One concept per module, each depending only on those below it::

    applying     load_installation (read → validate → connectors → desired state), apply
    desired      the DesiredState a valid file describes (pure)
    connectors   the connector documents the file names, loaded; permissions held to them
    validation   the file's own problems: its schema, then what a schema cannot say
    file         reading the file; the line a JSON pointer is on
    problems     InstallationInvalid (its problems are connector Problems: same form)
"""

from shared.installation.applying import ApplyReport, apply, load_installation
from shared.installation.desired import desired_state
from shared.installation.file import read_file
from shared.installation.problems import InstallationInvalid
from shared.installation.validation import validate

__all__ = [
    "ApplyReport",
    "InstallationInvalid",
    "apply",
    "desired_state",
    "load_installation",
    "read_file",
    "validate",
]
