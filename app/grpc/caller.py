"""Who calls an RPC: the key in metadata `authorization: Bearer <key>`, resolved by the code HTTP
uses (app/web/auth.py), then admitted as GraphQL admits an operation (a refused key is
UNAUTHENTICATED, a key that cannot be checked now is its error, and the key's rate limit
applies). Grants, tenant filters and limits are the services' to enforce."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from grpc.aio import ServicerContext

from app.domain.access import Principal
from app.inference.callers import CLIENT_ADDRESS
from app.web.auth import admit as admit_secret
from app.web.auth import bearer

if TYPE_CHECKING:
    from app.services.container import Services


def authorization(context: ServicerContext) -> str | None:
    """The `authorization` metadata value; gRPC lower-cases metadata keys."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else ""  # bytes: only `-bin` keys carry them
    return None


async def admit(services: Services, context: ServicerContext) -> Principal:
    return await admit_secret(services, bearer(authorization(context)))


def peer_address(peer: str | None) -> str | None:
    """`ipv4:127.0.0.1:5000` -> `127.0.0.1`, `ipv6:[::1]:5000` -> `::1`, `unix:/path` -> `/path`."""
    if not peer:
        return None
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest[1 : rest.index("]")] if rest.startswith("[") and "]" in rest else rest
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    return rest or None


@contextmanager
def client_address(context: ServicerContext) -> Iterator[None]:
    """The client's address while the RPC runs: its fair share of the model where keys are not
    required (app/inference/callers.py), as CallerEdge sets it for HTTP."""
    token = CLIENT_ADDRESS.set(peer_address(context.peer()))
    try:
        yield
    finally:
        CLIENT_ADDRESS.reset(token)
