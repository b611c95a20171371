"""One place that decides what clients see of an error (the codes schema.graphql documents; never a stack trace)."""

from __future__ import annotations

import asyncpg
from graphql.error import GraphQLError
from loguru import logger

from app.errors import CitadelError

# asyncpg's DataError is PostgreSQL's class 22 (bad value: invalid character, out of range...).
STORE_REFUSED_INPUT: tuple[type[BaseException], ...] = (asyncpg.DataError, UnicodeEncodeError)

COST_MARKERS = ("exceeds maximum operation depth", "aliases found. Allowed", "Parsing aborted")


def public_error(error: GraphQLError) -> GraphQLError:
    original = error.original_error
    if original is None and (error.extensions or {}).get("code"):
        return error  # already public (raised by our own extensions)
    if isinstance(original, CitadelError):
        code, message, extra = original.code, original.message, original.to_extensions()
    elif isinstance(original, STORE_REFUSED_INPUT):
        # A value the database cannot hold that slipped past app/validation.py: the client's input.
        code, message, extra = "BAD_INPUT", f"a value cannot be stored: {_first_line(original)}", {}
    elif isinstance(original, GraphQLError) or (original is None and error.path is not None):
        # Argument coercion problems raised inside execution are the client's input.
        code, message, extra = "BAD_INPUT", error.message, {}
    elif original is None:
        if any(marker in error.message for marker in COST_MARKERS):
            code = "BAD_INPUT"
        elif error.message.startswith("Syntax Error"):
            code = "GRAPHQL_PARSE_FAILED"
        else:
            code = "GRAPHQL_VALIDATION_FAILED"
        message, extra = error.message, {}
    else:
        logger.opt(exception=original).error("unhandled error in {}", ".".join(map(str, error.path or [])))
        code, message, extra = "INTERNAL", "Internal server error.", {}
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions={**(error.extensions or {}), **extra, "code": code},
    )


def _first_line(error: BaseException) -> str:
    if isinstance(error, UnicodeEncodeError):
        return "text is not valid Unicode (unpaired surrogate)"
    return (str(error).splitlines() or [type(error).__name__])[0][:200]
