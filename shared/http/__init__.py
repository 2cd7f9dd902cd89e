"""The third-party HTTP client (docs/architecture.md §5 step 4), built from a connector document and
an instance.

Public surface::

    ThirdPartyClient(document, InstanceEndpoint(...), db=None)   # one per process and instance
        await client.send(plan) -> Response                       # raises shared.errors.*
        await client.aclose()
    InstanceEndpoint, Response, ClientOptions, RateLimit, Timeouts
    TokenStore, SharedTokenStore, MemoryTokenStore, Token

Errors are those of :mod:`shared.errors` (``UnsafeRequest``, ``RemoteUnavailable``,
``RateLimited``, ``RemoteConflict``, ``RemoteRejected``, ``AuthenticationFailed``,
``RemoteProtocolError``, ``ConfigurationError``); every httpx exception is translated
in :mod:`shared.http.outcome`.
"""

from shared.http.client import Response, ThirdPartyClient
from shared.http.settings import ClientOptions, InstanceEndpoint, RateLimit, Timeouts
from shared.http.tokens import MemoryTokenStore, SharedTokenStore, Token, TokenStore

__all__ = [
    "ClientOptions",
    "InstanceEndpoint",
    "MemoryTokenStore",
    "RateLimit",
    "Response",
    "SharedTokenStore",
    "ThirdPartyClient",
    "Timeouts",
    "Token",
    "TokenStore",
]
