"""The edge of access control: where a request's key is found, and who may read /metrics.

HTTP: `Authorization: Bearer <key>`. WebSocket: the `connection_init` payload
`{"authorization": "Bearer <key>"}` (graphql-ws / Apollo convention), else the upgrade
request's `Authorization` header. Secrets are never logged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from starlette.requests import HTTPConnection
from strawberry.asgi import ASGIWebSocketAdapter

from app.domain.access import ANONYMOUS, Principal, rejected
from app.errors import CitadelError, Unauthenticated

if TYPE_CHECKING:
    from starlette.requests import Request

    from app.services.container import Services

MAX_SECRET_CHARS = 512
WS_UNAUTHENTICATED = 4401
WS_FORBIDDEN = 4403
WS_TRY_AGAIN = 1013  # "try again later": the key could not be checked (a dependency is down)


def bearer(value: Any) -> str | None:
    """The secret of an `Authorization` value, or None when there is none.

    A value that is not a bearer token yields "" (a key was given but is not valid), so the
    caller is refused instead of treated as anonymous."""
    if value is None:
        return None
    if not isinstance(value, str):
        return ""
    scheme, _, secret = value.strip().partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret or len(secret) > MAX_SECRET_CHARS:
        return ""
    return secret


def http_secret(connection: HTTPConnection) -> str | None:
    return bearer(connection.headers.get("authorization"))


def ws_secret(connection: HTTPConnection, params: Mapping[str, Any] | None) -> str | None:
    """The connection_init payload wins over the upgrade header (browsers cannot set headers)."""
    if isinstance(params, Mapping):
        for name in ("authorization", "Authorization"):
            if name in params:
                return bearer(params[name])
    return http_secret(connection)


def ws_close_code(principal: Principal) -> int:
    return WS_UNAUTHENTICATED if principal.kind == "rejected" else WS_FORBIDDEN


# How Strawberry closes a refused connection_init: graphql-transport-ws and legacy graphql-ws.
STRAWBERRY_REJECT_CODES = (WS_FORBIDDEN, 1011)


class AuthClosingWebSocketAdapter(ASGIWebSocketAdapter):
    """Strawberry closes a refused connection_init with 4403 (1011 on legacy graphql-ws); an
    unauthenticated one gets 4401 instead."""

    async def close(self, code: int, reason: str) -> None:
        wanted = getattr(self.ws.state, "reject_code", None)
        if code in STRAWBERRY_REJECT_CODES and wanted is not None:
            code, reason = wanted, "Unauthorized" if wanted == WS_UNAUTHENTICATED else reason
        await super().close(code, reason)


async def resolve_principal(services: Services, secret: str | None) -> tuple[Principal, CitadelError | None]:
    """The caller for a secret; a key that cannot be checked now is an error of its own."""
    if secret == "":
        return rejected("malformed Authorization value; expected: Bearer <key>"), None
    try:
        return await services.keys.authenticate(secret), None
    except CitadelError as exc:
        return rejected("the key could not be checked"), exc


def require_key(principal: Principal, error: CitadelError | None) -> Principal:
    """The access gate, for every transport: a key that could not be checked now is its error,
    a refused key is UNAUTHENTICATED; anyone else goes on to the services' grants."""
    if error is not None:
        raise error
    if principal.kind == "rejected":
        raise Unauthenticated(principal.reason or "a valid API key is required")
    return principal


async def admit(services: Services, secret: str | None) -> Principal:
    """A caller of a plain HTTP or gRPC operation: resolved, through the gate, within its rate limit
    (GraphQL: OperationRules.admit, which adds its per-operation rules)."""
    principal = require_key(*await resolve_principal(services, secret))
    await services.limiter.check(principal)
    return principal


async def authorize_http(request: Request, services: Services) -> Principal:
    """The caller of a plain HTTP endpoint (/v1/embeddings, /v1/rerank, /rerank). OpenAI and Cohere
    clients always send some key: where keys are not required, one that is not a Citadel key is
    ignored."""
    secret = http_secret(request)
    if not services.settings.auth_required:
        principal, error = await resolve_principal(services, secret)
        if error is not None or principal.kind == "rejected":
            return ANONYMOUS
        await services.limiter.check(principal)
        return principal
    return await admit(services, secret)
