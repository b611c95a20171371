"""Domain errors. Each carries the GraphQL `extensions.code` that clients see (schema.graphql documents them).

Anything that is not a CitadelError reaching the GraphQL layer is masked as INTERNAL.
"""

from __future__ import annotations

from typing import Any


class CitadelError(Exception):
    code = "INTERNAL"

    def __init__(self, message: str, **extensions: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extensions = extensions

    def to_extensions(self) -> dict[str, Any]:
        return {"code": self.code, **self.extensions}


class BadInput(CitadelError):
    code = "BAD_INPUT"


class NotFound(CitadelError):
    code = "NOT_FOUND"


class Conflict(CitadelError):
    code = "CONFLICT"


class ModelUnavailable(CitadelError):
    code = "MODEL_UNAVAILABLE"


class Overloaded(CitadelError):
    code = "OVERLOADED"


class DependencyUnavailable(CitadelError):
    code = "DEPENDENCY_UNAVAILABLE"


class Internal(CitadelError):
    code = "INTERNAL"


class Unauthenticated(CitadelError):
    code = "UNAUTHENTICATED"


class Forbidden(CitadelError):
    code = "FORBIDDEN"


class RateLimited(CitadelError):
    code = "RATE_LIMITED"

    def __init__(self, message: str, retry_after: float, **extensions: Any) -> None:
        super().__init__(message, retryAfter=retry_after, **extensions)
        self.retry_after = retry_after
