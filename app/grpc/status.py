"""One table from Citadel's error codes (app/errors.py) to gRPC status codes, and the one way an
RPC fails: that status, the error's message as details, its code in trailing metadata
`citadel-code` (and `retry-after` seconds where the error has one)."""

from __future__ import annotations

import grpc
from grpc.aio import ServicerContext

from app.errors import CitadelError

CODE_METADATA = "citadel-code"

STATUS: dict[str, grpc.StatusCode] = {
    "BAD_INPUT": grpc.StatusCode.INVALID_ARGUMENT,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "FORBIDDEN": grpc.StatusCode.PERMISSION_DENIED,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "CONFLICT": grpc.StatusCode.ABORTED,
    "RATE_LIMITED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "OVERLOADED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "MODEL_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "DEPENDENCY_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}
INTERNAL_MESSAGE = "Internal server error."


def status_of(error: CitadelError) -> grpc.StatusCode:
    return STATUS.get(error.code, grpc.StatusCode.INTERNAL)


def trailers(error: CitadelError) -> tuple[tuple[str, str], ...]:
    found = [(CODE_METADATA, error.code)]
    retry_after = error.extensions.get("retryAfter")
    if retry_after is not None:
        found.append(("retry-after", str(retry_after)))
    return tuple(found)


async def abort(context: ServicerContext, error: CitadelError) -> None:
    """Ends the RPC (raises): an INTERNAL error never shows its own message, as GraphQL masks it."""
    status = status_of(error)
    message = INTERNAL_MESSAGE if status is grpc.StatusCode.INTERNAL else error.message
    await context.abort(status, message, trailing_metadata=trailers(error))
