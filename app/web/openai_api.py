"""OpenAI-compatible `POST /v1/embeddings`, for the `openai` client, LangChain (with
`check_embedding_ctx_length=False`: Citadel takes strings, not token arrays) and LlamaIndex. Same
EmbeddingService as GraphQL `embed` (catalog, pool, fair queue, cache, limits, metrics); only the
wire format differs, and a request may carry up to limits.max_inputs_per_openai_request inputs
(2,048, as OpenAI's), which the service embeds in slices the queue admits. Errors come back in
OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the HTTP status OpenAI
would use. The body is read after the key is checked, and only up to the server's body limit (413
past it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from app.domain.access import Principal
from app.errors import BadInput, CitadelError, Internal
from app.graphql.http import BodyTooLarge, read_capped, refuse_declared_over
from app.graphql.types import vector_base64
from app.requests import EmbedRequest
from app.services.container import Services
from app.web.json_codec import FastJSONResponse, loads

# The access hook: returns the caller, or raises a CitadelError (UNAUTHENTICATED, RATE_LIMITED)
# to refuse; the embedding service then checks the caller's scope as for GraphQL `embed`.
Authorize = Callable[[Request, Services], Awaitable[Principal]]


# CitadelError.code -> (HTTP status, OpenAI error type).
_STATUS = {
    "BAD_INPUT": (400, "invalid_request_error"),
    "NOT_FOUND": (404, "invalid_request_error"),
    "UNAUTHENTICATED": (401, "authentication_error"),
    "FORBIDDEN": (403, "permission_error"),
    "RATE_LIMITED": (429, "rate_limit_error"),
    "OVERLOADED": (429, "rate_limit_error"),  # clients back off and retry, as for OpenAI's own
    "MODEL_UNAVAILABLE": (503, "service_unavailable_error"),
    "DEPENDENCY_UNAVAILABLE": (503, "service_unavailable_error"),
}
ENCODINGS = ("float", "base64")


def openai_routes(authorize: Authorize) -> list[Route]:
    async def embeddings(request: Request) -> Response:
        services: Services = request.app.state.services
        limit = services.settings.request_body_limit
        raw = None
        try:
            refuse_declared_over(request.scope, limit)
            principal = await authorize(request, services)
            raw = await read_capped(request, limit)
            body = _json_object(raw)
            most = services.settings.limits.max_inputs_per_openai_request
            texts, model, encoding, dimensions = _parse(body)
            embed = EmbedRequest.parse(
                texts, services.settings.limits, model=model, count_tokens=True, max_texts=most,
                max_texts_setting="CITADEL_LIMITS__MAX_INPUTS_PER_OPENAI_REQUEST",
            )  # fmt: skip
            outcome = await services.embedder.run(embed, principal=principal)
            if dimensions is not None and dimensions != outcome.dimensions:
                # No catalog model is Matryoshka-trained: a shortened vector would be a worse one.
                raise BadInput(
                    f"model {outcome.model!r} produces {outcome.dimensions} dimensions and cannot shorten them; "
                    "omit `dimensions`",
                    param="dimensions",
                )
        except CitadelError as exc:
            refused = _error(exc)
            if raw is None:  # refused before its body was read (UNAUTHENTICATED, RATE_LIMITED): never read it
                refused.headers["connection"] = "close"
            return refused
        except BodyTooLarge as exc:  # the rest of the body is never read
            error = {"message": exc.message, "type": "invalid_request_error", "param": None, "code": "request_too_large"}
            return FastJSONResponse({"error": error}, status_code=413, headers={"connection": "close"})
        except ClientDisconnect:
            logger.debug("/v1/embeddings: the client left before sending its whole body")
            return Response(status_code=400)
        except Exception:  # noqa: BLE001  masked like GraphQL's INTERNAL, logged with its traceback
            logger.exception("/v1/embeddings failed")
            return _error(Internal("Internal server error."))
        encode = vector_base64 if encoding == "base64" else (lambda row: row.tolist())
        tokens = sum(outcome.tokens or ())
        return FastJSONResponse(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": encode(row)} for i, row in enumerate(outcome.vectors)
                ],
                "model": outcome.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    return [Route("/v1/embeddings", embeddings, methods=["POST"])]


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = loads(raw)
    except ValueError as exc:
        raise BadInput(f"the request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadInput("the request body must be a JSON object")
    return body


# What a client that sends token ids instead of text is told (LangChain's OpenAIEmbeddings does by
# default: it splits texts with tiktoken, OpenAI's tokenizer, which is not the model's).
TOKEN_ARRAYS = (
    "`input` holds token arrays; Citadel embeds strings only (each model has its own tokenizer): send "
    "the texts themselves. LangChain's OpenAIEmbeddings sends token arrays by default: set "
    "check_embedding_ctx_length=False"
)


def _is_token_array(value: object) -> bool:
    """A non-empty list of ints: what OpenAI takes as one input already tokenized."""
    return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)


def _parse(body: dict[str, Any]) -> tuple[list[str], str | None, str, int | None]:
    """OpenAI's shapes (a string or a list of them; token arrays refused); EmbedRequest checks the texts."""
    raw = body.get("input")
    if isinstance(raw, str):
        texts = [raw]
    elif _is_token_array(raw) or (isinstance(raw, list) and raw and all(_is_token_array(t) for t in raw)):
        raise BadInput(TOKEN_ARRAYS, param="input")
    elif isinstance(raw, list):
        for index, text in enumerate(raw):
            if not isinstance(text, str):
                raise BadInput(
                    f"`input` must be a string or a list of strings; item {index} is {_json_type(text)}", param="input"
                )
        texts = raw
    else:
        raise BadInput("`input` is required: a string or a list of strings", param="input")
    model = body.get("model")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ENCODINGS:
        raise BadInput(f"`encoding_format` must be one of {', '.join(ENCODINGS)}", param="encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1):
        raise BadInput("`dimensions` must be a positive integer", param="dimensions")
    return texts, model, encoding, dimensions


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "an array" if isinstance(value, list) else "an object"


def _error(exc: CitadelError) -> Response:
    status, kind = _STATUS.get(exc.code, (500, "server_error"))
    message = exc.message if status != 500 else "Internal server error."
    param = exc.extensions.get("param")
    if param is None and "index" in exc.extensions:
        param = "input"
    if param is None and (argument := exc.extensions.get("argument")) is not None:
        param = "input" if argument == "texts" else argument  # EmbedRequest's texts are OpenAI's input
    code = "model_not_found" if exc.code == "NOT_FOUND" and "model" in exc.extensions else exc.code.lower()
    headers = {}
    retry_after = exc.extensions.get("retryAfter", exc.extensions.get("retry_after"))
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    return FastJSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status, headers=headers
    )
