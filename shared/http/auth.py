"""Credentials on third-party requests: which security scheme, which credential, and
OAuth2 tokens obtained from the scheme's token endpoint.

Credential names an instance maps to references (``env:NAME`` / ``file:PATH``):

==================  ==========================================================
scheme              credentials
==================  ==========================================================
apiKey              one named like the scheme, else ``apiKey``
http basic          ``username`` + ``password``
http bearer         ``token`` (or one named like the scheme)
oauth2 / OIDC       a grant at the token URL — ``refreshToken`` (grant
                    ``refresh_token``), else ``username`` + ``password``
                    (``password``), else ``clientId`` + ``clientSecret``
                    (``client_credentials``) — or a static ``accessToken``
==================  ==========================================================

Client authentication at the token endpoint is HTTP basic with ``clientId`` /
``clientSecret`` (RFC 6749 §2.3.1), or form fields with ``settings.tokenAuth: body``.
The token URL is ``settings.tokenUrl``, else the flow's for the grant, else any flow's
(a refresh token issued by an authorization-code flow is refreshed at its tokenUrl).
One OAuth2 token per instance: every oauth2 scheme of a connector names the same app.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections import deque
from collections.abc import Collection, Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import structlog

from shared.connector.document import ConnectorDocument
from shared.connector.openapi import Operation
from shared.connector.request import RequestPlan
from shared.connector.security import AuthScheme, apply_credential, auth_scheme, requirements
from shared.credentials import IDENTIFIER_CREDENTIALS
from shared.errors import (
    AuthenticationFailed,
    ConfigurationError,
    RemoteProtocolError,
    SyncError,
)
from shared.http.outcome import parse_retry_after, snippet, status_error, translate
from shared.http.settings import USER_AGENT, InstanceEndpoint, Timeouts
from shared.http.tokens import Token, TokenStore, utcnow
from shared.logging import forget_secret, register_secret

log = structlog.get_logger(__name__)

GRANT_FLOWS = {"client_credentials": "clientCredentials", "password": "password"}
#: OAuth2 tokens an authenticator keeps masked: the current one and the one before.
KEPT_TOKENS = 2


def grant_type(names: Collection[str]) -> str | None:
    """The OAuth2 grant the instance's credentials allow, or ``None``."""
    if "refreshToken" in names:
        return "refresh_token"
    if {"username", "password"} <= set(names):
        return "password"
    if {"clientId", "clientSecret"} <= set(names):
        return "client_credentials"
    return None


def token_url(
    scheme: AuthScheme, grant: str, settings: Mapping[str, Any], base_url: str
) -> str | None:
    """Where to ask for a token with ``grant``; relative URLs are resolved on the server."""
    url = settings.get("tokenUrl")
    flows = {k: v for k, v in scheme.flows.items() if isinstance(v, dict)}
    if not url and GRANT_FLOWS.get(grant) in flows:
        url = flows[GRANT_FLOWS[grant]].get("tokenUrl")
    if not url:
        url = next((f["tokenUrl"] for f in flows.values() if f.get("tokenUrl")), None)
    return urljoin(base_url + "/", url) if url else None


def credential_for(scheme: AuthScheme, names: Collection[str]) -> str | None:
    """The credential name holding a single-valued scheme's secret, if the instance has it."""
    if scheme.type == "apiKey":
        candidates = (scheme.name, "apiKey")
    elif scheme.type in ("oauth2", "openIdConnect"):
        candidates = ("accessToken", scheme.name)
    else:
        candidates = ("token", scheme.name)
    return next((n for n in candidates if n in names), None)


def satisfiable(
    scheme: AuthScheme, names: Collection[str], settings: Mapping[str, Any], base_url: str
) -> bool:
    """Whether the instance's credentials (by name) can fill ``scheme``."""
    if scheme.is_basic:
        return {"username", "password"} <= set(names)
    if scheme.type in ("oauth2", "openIdConnect"):
        grant = grant_type(names)
        if grant and token_url(scheme, grant, settings, base_url):
            return True
    return scheme.type in ("apiKey", "http", "oauth2", "openIdConnect") and bool(
        credential_for(scheme, names)
    )


def choose_schemes(
    document: ConnectorDocument,
    operation: Operation,
    names: Collection[str],
    settings: Mapping[str, Any],
    base_url: str,
) -> list[AuthScheme]:
    """The schemes to use for ``operation``: ``settings.securityScheme`` when set, else
    the first alternative the instance's credentials fill; ``[]`` when none is declared.

    Raises ``ConfigurationError`` naming schemes and credential *names* (never values).
    """
    alternatives = requirements(document, operation)
    preferred = settings.get("securityScheme")
    if preferred:
        declared = document.security_schemes()
        if not isinstance(declared.get(preferred), dict):
            raise ConfigurationError(
                f"instance setting securityScheme {preferred!r} is not a security scheme of "
                f"the connector (declared: {', '.join(declared) or 'none'})"
            )
        chosen = next((a for a in alternatives if any(s.name == preferred for s in a)), None)
        return chosen or [auth_scheme(preferred, declared[preferred])]
    if not alternatives:
        return []
    for alternative in alternatives:
        if all(satisfiable(s, names, settings, base_url) for s in alternative):
            return alternative
    wanted = " | ".join(" + ".join(s.name for s in a) for a in alternatives)
    raise ConfigurationError(
        f"{operation.key} needs security {wanted}, and the instance's credentials "
        f"({', '.join(sorted(names)) or 'none'}) fill none of them"
    )


@dataclasses.dataclass(frozen=True)
class Applied:
    """The credentials chosen for one request: schemes and, for OAuth2, the token used."""

    schemes: tuple[AuthScheme, ...]
    bearer: str | None = dataclasses.field(default=None, repr=False)
    refreshable: bool = False


class Authenticator:
    """Places an instance's credentials on requests and keeps its OAuth2 token fresh.

    ``credentials`` are the resolved values by name; they never appear in ``repr``
    or in an error message.
    """

    def __init__(
        self,
        document: ConnectorDocument,
        endpoint: InstanceEndpoint,
        base_url: str,
        credentials: Mapping[str, str],
        store: TokenStore,
        *,
        timeouts: Timeouts,
        refresh_margin: float,
    ) -> None:
        self.document = document
        self.endpoint = endpoint
        self.base_url = base_url
        self._credentials = dict(credentials)
        self._store = store
        self._timeouts = timeouts
        self._margin = refresh_margin
        self._token: Token | None = None
        self._masked: deque[Token] = deque()  # the tokens this authenticator keeps masked
        self._lock = asyncio.Lock()
        self._choices: dict[str, list[AuthScheme]] = {}
        self._http: httpx.AsyncClient | None = None
        _register_derived_secrets(self._credentials)

    def __repr__(self) -> str:
        names = sorted(self._credentials)
        return f"Authenticator(instance={self.endpoint.id!r}, credentials={names})"

    def schemes_for(self, operation: Operation) -> list[AuthScheme]:
        """The schemes used for ``operation`` (cached). Raises ``ConfigurationError``."""
        if operation.key not in self._choices:
            self._choices[operation.key] = choose_schemes(
                self.document, operation, self._credentials, self.endpoint.settings,
                self.base_url,
            )
        return self._choices[operation.key]

    async def prepare(self, operation: Operation, *, stale: str | None = None) -> Applied:
        """The credentials for a request of ``operation``, obtaining an OAuth2 token when
        needed; ``stale`` is a token the server just refused, never returned again.

        Raises ``ConfigurationError``, ``AuthenticationFailed`` (the token endpoint
        refused the grant), ``RemoteUnavailable``/``RateLimited`` (it failed),
        ``RemoteProtocolError`` (it answered no token), ``InfrastructureError``.
        """
        schemes = tuple(self.schemes_for(operation))
        grant_scheme = next((s for s in schemes if self._grant(s)), None)
        if grant_scheme is None:
            return Applied(schemes)
        token = await self._access_token(grant_scheme, stale)
        return Applied(schemes, token.access_token, refreshable=True)

    def place(self, plan: RequestPlan, applied: Applied) -> RequestPlan:
        """``plan`` with every chosen scheme's credential where the scheme says."""
        for scheme in applied.schemes:
            if scheme.is_basic:
                plan = apply_credential(
                    plan, scheme, username=self._credentials["username"],
                    password=self._credentials["password"],
                )
            elif scheme.sends_bearer and applied.bearer is not None:
                plan = apply_credential(plan, scheme, token=applied.bearer)
            else:
                name = credential_for(scheme, self._credentials)
                if name is not None:
                    plan = apply_credential(plan, scheme, token=self._credentials[name])
        return plan

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- OAuth2 -----------------------------------------------------------------------

    def _grant(self, scheme: AuthScheme) -> str | None:
        if scheme.type not in ("oauth2", "openIdConnect"):
            return None
        grant = grant_type(self._credentials)
        if grant and token_url(scheme, grant, self.endpoint.settings, self.base_url):
            return grant
        return None

    async def _access_token(self, scheme: AuthScheme, stale: str | None) -> Token:
        def usable(token: Token) -> bool:
            return token.access_token != stale and token.usable(utcnow(), self._margin)

        async def fetch(current: Token | None) -> Token:
            return await self._request_token(scheme, current)

        if self._token is not None and usable(self._token):
            return self._token
        async with self._lock:  # one task per process asks the store; the others wait
            if self._token is not None and usable(self._token):
                return self._token
            stored = await self._store.load() if stale is None else None
            if stored is not None and usable(stored):
                return self._use(stored)
            return self._use(await self._store.refresh(fetch, usable))

    def _use(self, token: Token) -> Token:
        """Make ``token`` the current one, masked from now on — obtained here or by
        another process through the shared store. The token before stays masked (it
        is still valid for up to the refresh margin, and may be in requests in flight);
        the one before that is forgotten, so the masked secrets do not grow with every
        refresh for as long as the process runs."""
        self._token = token
        if self._masked and self._masked[-1].access_token == token.access_token:
            return token
        register_secret(token.access_token)
        register_secret(token.refresh_token)
        self._masked.append(token)
        while len(self._masked) > KEPT_TOKENS:
            old = self._masked.popleft()
            kept = {*self._credentials.values(),
                    *(value for t in self._masked for value in (t.access_token, t.refresh_token))}
            for value in (old.access_token, old.refresh_token):
                if value not in kept:
                    forget_secret(value)
        return token

    async def _request_token(self, scheme: AuthScheme, current: Token | None) -> Token:
        """A new token: by refresh token when there is one (the rotated one stored, else
        the credential); when that grant is refused and the credentials allow another
        grant (refresh tokens expire), by that one."""
        refresh = (current.refresh_token if current else None) or self._credentials.get(
            "refreshToken"
        )
        primary = grant_type(set(self._credentials) - {"refreshToken"})
        if not refresh:
            assert primary is not None
            return await self._grant_request(scheme, primary, None, current)
        try:
            return await self._grant_request(scheme, "refresh_token", refresh, current)
        except AuthenticationFailed:
            if primary is None:
                raise
            log.warning("oauth_token.refresh_refused", instance_id=self.endpoint.id,
                        fallback=primary)
            return await self._grant_request(scheme, primary, None, None)

    async def _grant_request(
        self, scheme: AuthScheme, grant: str, refresh: str | None, current: Token | None
    ) -> Token:
        url = token_url(scheme, grant, self.endpoint.settings, self.base_url)
        if url is None:
            raise ConfigurationError(
                f"instance {self.endpoint.id}: no token URL for the {grant} grant of "
                f"security scheme {scheme.name} (set settings.tokenUrl)"
            )
        form, auth = self._token_form(grant, refresh)
        request = f"POST {urlsplit(url).path or '/'}"
        try:
            response = await self._token_client().post(
                url, data=form, auth=auth, headers={"Accept": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise translate(exc, f"token request {request}") from exc
        token = self._parse_token(request, response, current)
        log.info("oauth_token.obtained", instance_id=self.endpoint.id, grant=grant,
                 expires_at=token.expires_at.isoformat() if token.expires_at else None)
        return token

    def _token_form(
        self, grant: str, refresh: str | None
    ) -> tuple[dict[str, str], httpx.BasicAuth | None]:
        creds = self._credentials
        form = {"grant_type": grant}
        if grant == "refresh_token":
            form["refresh_token"] = refresh or ""
        elif grant == "password":
            form.update(username=creds["username"], password=creds["password"])
        scope = self.endpoint.setting("scope")
        if scope:
            form["scope"] = " ".join(scope) if isinstance(scope, list) else str(scope)
        client_id, secret = creds.get("clientId"), creds.get("clientSecret")
        if client_id and self.endpoint.setting("tokenAuth", "basic") == "body":
            form["client_id"] = client_id
            if secret:
                form["client_secret"] = secret
            return form, None
        if client_id:
            return form, httpx.BasicAuth(client_id, secret or "")
        return form, None

    def _parse_token(
        self, request: str, response: httpx.Response, current: Token | None
    ) -> Token:
        if response.status_code in (400, 401, 403):
            raise AuthenticationFailed(
                f"token request {request} answered {response.status_code}: "
                f"{snippet(response.content) or 'no detail'}",
                http_status=response.status_code,
            )
        if response.status_code >= 300:
            raise _token_status_error(request, response)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise RemoteProtocolError(
                f"token request {request} answered {response.status_code} without an "
                "access_token", http_status=response.status_code,
            )
        obtained = utcnow()
        expires_in = body.get("expires_in")
        expires_at = None
        if isinstance(expires_in, int | float) or (
            isinstance(expires_in, str) and expires_in.isdigit()
        ):
            expires_at = obtained + timedelta(seconds=float(expires_in))
        refresh = body.get("refresh_token") if isinstance(body.get("refresh_token"), str) else None
        register_secret(body["access_token"])
        register_secret(refresh)
        return Token(
            body["access_token"],
            expires_at,
            refresh or (current.refresh_token if current else None),
            obtained,
        )

    def _token_client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(self._timeouts.read, connect=self._timeouts.connect),
                follow_redirects=False,
                headers={"User-Agent": USER_AGENT},
            )
        return self._http


def _register_derived_secrets(credentials: Mapping[str, str]) -> None:
    """Mask the forms credentials take on the wire too: a server echoing our request in
    an error body shows them URL-encoded or as a basic-auth value, not as resolved
    (the encoded forms of each value are :func:`register_secret`'s own)."""
    for name, value in credentials.items():
        register_secret(value, identifier=name in IDENTIFIER_CREDENTIALS)
    if "username" in credentials and "password" in credentials:
        pair = f"{credentials['username']}:{credentials['password']}".encode()
        register_secret(base64.b64encode(pair).decode())


def _token_status_error(request: str, response: httpx.Response) -> SyncError:
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    return status_error(
        f"token request {request}", response.status_code, response.content,
        retry_after=retry_after,
    )
