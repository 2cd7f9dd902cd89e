"""Security schemes of a connector: which credentials an operation needs, and where
they go in the request (header, query, cookie).

The values themselves come from the instance's credential references at run time
(``shared.credentials``); this module only knows the shapes, so the preview can
show exactly where a credential would be — masked.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

from shared.connector.document import ConnectorDocument
from shared.connector.openapi import Operation
from shared.connector.request import RequestPlan, with_query
from shared.logging import MASK


@dataclasses.dataclass(frozen=True)
class AuthScheme:
    """One ``components.securitySchemes`` entry, reduced to what a client needs."""

    name: str
    type: str  # apiKey | http | oauth2 | openIdConnect | mutualTLS
    location: str | None = None  # apiKey: header | query | cookie
    param_name: str | None = None  # apiKey: the header/query/cookie name
    http_scheme: str | None = None  # http: basic | bearer | …
    flows: dict[str, Any] = dataclasses.field(default_factory=dict)  # oauth2

    @property
    def is_basic(self) -> bool:
        return self.type == "http" and (self.http_scheme or "").lower() == "basic"

    @property
    def sends_bearer(self) -> bool:
        return self.type in ("oauth2", "openIdConnect") or (
            self.type == "http" and (self.http_scheme or "").lower() == "bearer"
        )


def auth_scheme(name: str, spec: dict[str, Any]) -> AuthScheme:
    return AuthScheme(
        name=name,
        type=str(spec.get("type")),
        location=spec.get("in"),
        param_name=spec.get("name"),
        http_scheme=spec.get("scheme"),
        flows=spec.get("flows") or {},
    )


def requirements(document: ConnectorDocument, operation: Operation) -> list[list[AuthScheme]]:
    """The alternatives (each a list of schemes used together) the operation accepts.
    An empty list means no authentication is declared."""
    raw = operation.raw.get("security")
    if raw is None:
        raw = document.document.get("security")
    schemes = document.security_schemes()
    alternatives = []
    for requirement in raw or []:
        if not isinstance(requirement, dict):
            continue
        if not requirement:
            return []  # {} means anonymous access is allowed
        alternative = [
            auth_scheme(name, schemes[name])
            for name in requirement
            if isinstance(schemes.get(name), dict)
        ]
        if alternative:
            alternatives.append(alternative)
    return alternatives


def choose(
    document: ConnectorDocument, operation: Operation, preferred: str | None = None
) -> list[AuthScheme]:
    """The schemes to use: the alternative naming ``preferred`` if any, else the first."""
    alternatives = requirements(document, operation)
    if preferred:
        for alternative in alternatives:
            if any(s.name == preferred for s in alternative):
                return alternative
        schemes = document.security_schemes()
        if isinstance(schemes.get(preferred), dict):
            return [auth_scheme(preferred, schemes[preferred])]
    return alternatives[0] if alternatives else []


def apply_credential(
    plan: RequestPlan,
    scheme: AuthScheme,
    *,
    token: str | None = None,
    username: str | None = None,
    password: str | None = None,
) -> RequestPlan:
    """``plan`` with one scheme's credential placed where the scheme says."""
    headers = dict(plan.headers)
    url = plan.url
    if scheme.type == "apiKey" and scheme.param_name and token is not None:
        if scheme.location == "query":
            url = with_query(url, {scheme.param_name: token})
        elif scheme.location == "cookie":
            cookie = f"{scheme.param_name}={token}"
            headers["Cookie"] = f"{headers['Cookie']}; {cookie}" if "Cookie" in headers else cookie
        else:
            headers[scheme.param_name] = token
    elif scheme.is_basic and username is not None:
        if password == MASK and username == MASK:
            headers["Authorization"] = f"Basic {MASK}"
        else:
            raw = f"{username}:{password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
    elif scheme.sends_bearer and token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return dataclasses.replace(plan, url=url, headers=headers)


def masked(plan: RequestPlan, schemes: list[AuthScheme]) -> RequestPlan:
    """``plan`` with every credential the schemes need shown as ``***``."""
    for scheme in schemes:
        plan = apply_credential(plan, scheme, token=MASK, username=MASK, password=MASK)
    return plan
