"""Connector documents: OpenAPI 3 + ``x-synchronization`` (docs/architecture.md §3).

Public surface::

    load_connector(paths, overlay=None) -> ConnectorDocument   # raises DocumentInvalid
    check_connector(paths, overlay=None) -> (ConnectorDocument | None, [Problem])
    ConnectorDocument, SyncObject, CallSpec, Operation
    Problem, DocumentInvalid
"""

from shared.connector.document import CallSpec, ConnectorDocument, SyncObject
from shared.connector.loader import (
    check_connector,
    document_from_bundle,
    document_sha256,
    load_connector,
)
from shared.connector.openapi import Operation
from shared.connector.problems import DocumentInvalid, Problem

__all__ = [
    "CallSpec",
    "ConnectorDocument",
    "DocumentInvalid",
    "Operation",
    "Problem",
    "SyncObject",
    "check_connector",
    "document_from_bundle",
    "document_sha256",
    "load_connector",
]
