"""Rerank over plain HTTP, in the two shapes tools already speak:

- `POST /v1/rerank` (and `/v2/rerank`), Cohere's: `{model, query, documents: [string | {text}],
  top_n, return_documents}` -> `{id, results: [{index, relevance_score, document?: {text}}],
  meta: {billed_units: {search_units: 1}}}`; errors `{"message", "code"}`.
- `POST /rerank`, Hugging Face TEI's: `{query, texts, raw_scores, return_text, truncate}` ->
  `[{index, score, text?}]` best first; errors `{"error", "error_type"}`.

Same RerankService as GraphQL `rerank`, same edge as /v1/embeddings: the key is checked and its
rate limit applied before the body is read (app/web/auth.py authorize_http), the body is capped
at the server's limit (413 past it), and errors are mapped from their codes in one table each.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from loguru import logger
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from app.errors import BadInput, CitadelError, Internal
from app.graphql.http import BodyTooLarge, read_capped, refuse_declared_over
from app.requests import RerankRequest
from app.services.container import Services
from app.services.rerank import RerankOutcome
from app.web.json_codec import FastJSONResponse
from app.web.openai_api import Authorize, _json_object

# CitadelError.code -> HTTP status, as Cohere and TEI answer them (TEI: 422 for a bad request).
_COHERE_STATUS = {
    "BAD_INPUT": 400,
    "NOT_FOUND": 404,
    "UNAUTHENTICATED": 401,
    "FORBIDDEN": 403,
    "RATE_LIMITED": 429,
    "OVERLOADED": 429,
    "MODEL_UNAVAILABLE": 503,
    "DEPENDENCY_UNAVAILABLE": 503,
}
_TEI_STATUS = {
    "BAD_INPUT": (422, "Validation"),
    "NOT_FOUND": (404, "Validation"),
    "UNAUTHENTICATED": (401, "Unauthorized"),
    "FORBIDDEN": (403, "Unauthorized"),
    "RATE_LIMITED": (429, "Overloaded"),
    "OVERLOADED": (429, "Overloaded"),
    "MODEL_UNAVAILABLE": (503, "Unhealthy"),
    "DEPENDENCY_UNAVAILABLE": (503, "Unhealthy"),
}

Parsed = dict[str, Any]


def rerank_routes(authorize: Authorize) -> list[Route]:
    def endpoint(
        name: str,
        parse: Callable[[dict[str, Any]], Parsed],
        answer: Callable[[RerankOutcome, Parsed], Any],
        error: Callable[[CitadelError], Response],
    ) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            services: Services = request.app.state.services
            limit = services.settings.request_body_limit
            raw = None
            try:
                refuse_declared_over(request.scope, limit)
                principal = await authorize(request, services)
                raw = await read_capped(request, limit)
                args = parse(_json_object(raw))
                rerank = RerankRequest.parse(
                    args["query"], args["documents"], services.settings.limits, model=args.get("model"),
                    top_n=args.get("top_n"), raw_scores=args.get("raw_scores", False),
                )  # fmt: skip
                outcome = await services.reranker.run(rerank, principal=principal)
            except CitadelError as exc:
                refused = error(exc)
                if raw is None:  # refused before its body was read: never read it
                    refused.headers["connection"] = "close"
                return refused
            except BodyTooLarge as exc:
                refused = error(BadInput(exc.message))
                refused.status_code = 413
                refused.headers["connection"] = "close"
                return refused
            except ClientDisconnect:
                logger.debug("{}: the client left before sending its whole body", name)
                return Response(status_code=400)
            except Exception:  # noqa: BLE001  masked as INTERNAL, logged with its traceback
                logger.exception("{} failed", name)
                return error(Internal("Internal server error."))
            return FastJSONResponse(answer(outcome, args))

        return handle

    cohere = endpoint("/v1/rerank", _parse_cohere, _cohere_answer, _cohere_error)
    return [
        Route("/v1/rerank", cohere, methods=["POST"]),
        Route("/v2/rerank", cohere, methods=["POST"]),  # Cohere's ClientV2 posts here, same shape
        Route("/rerank", endpoint("/rerank", _parse_tei, _tei_answer, _tei_error), methods=["POST"]),
    ]


# -- Cohere ----------------------------------------------------------------------------------------


def _parse_cohere(body: dict[str, Any]) -> Parsed:
    query = _required(body, "query", str, "a string")
    raw = _required(body, "documents", list, "a list of strings or of objects with `text`")
    documents = []
    for index, item in enumerate(raw):
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise BadInput(f"document {index} must be a string or an object with a string `text`", param="documents", index=index)
        documents.append(text)
    model = _model(body)
    top_n = body.get("top_n")
    returning = body.get("return_documents", False)
    if not isinstance(returning, bool):
        raise BadInput("`return_documents` must be true or false", param="return_documents")
    return {"query": query, "documents": documents, "model": model, "top_n": top_n, "return_documents": returning}


def _cohere_answer(outcome: RerankOutcome, args: Parsed) -> dict[str, Any]:
    results = []
    for hit in outcome.hits:
        result: dict[str, Any] = {"index": hit.index, "relevance_score": hit.score}
        if args["return_documents"]:
            result["document"] = {"text": hit.text}
        results.append(result)
    return {"id": str(uuid.uuid4()), "results": results, "meta": {"billed_units": {"search_units": 1}}}


def _cohere_error(exc: CitadelError) -> Response:
    status = _COHERE_STATUS.get(exc.code, 500)
    message = exc.message if status != 500 else "Internal server error."
    return FastJSONResponse({"message": message, "code": exc.code}, status_code=status, headers=_retry_after(exc))


# -- TEI ---------------------------------------------------------------------------------------------


def _parse_tei(body: dict[str, Any]) -> Parsed:
    query = _required(body, "query", str, "a string")
    texts = _required(body, "texts", list, "a list of strings")
    flags = {}
    for name in ("raw_scores", "return_text", "truncate"):
        value = body.get(name, name == "truncate")
        if not isinstance(value, bool):
            raise BadInput(f"`{name}` must be true or false", param=name)
        flags[name] = value
    model = _model(body)  # not TEI's (one model per server): a catalog reranker, else the default
    return {"query": query, "documents": texts, "model": model, **flags}


def _tei_answer(outcome: RerankOutcome, args: Parsed) -> list[dict[str, Any]]:
    answer = []
    for hit in outcome.hits:
        item: dict[str, Any] = {"index": hit.index, "score": hit.score}
        if args["return_text"]:
            item["text"] = hit.text
        answer.append(item)
    return answer


def _tei_error(exc: CitadelError) -> Response:
    status, kind = _TEI_STATUS.get(exc.code, (500, "Backend"))
    message = exc.message if status != 500 else "Internal server error."
    return FastJSONResponse({"error": message, "error_type": kind}, status_code=status, headers=_retry_after(exc))


def _required(body: dict[str, Any], name: str, kind: type, what: str) -> Any:
    value = body.get(name)
    if not isinstance(value, kind):
        raise BadInput(f"`{name}` is required: {what}", param=name)
    return value


def _model(body: dict[str, Any]) -> str | None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadInput("`model` must be a string", param="model")
    return model


def _retry_after(exc: CitadelError) -> dict[str, str]:
    retry_after = exc.extensions.get("retryAfter", exc.extensions.get("retry_after"))
    return {"retry-after": str(retry_after)} if retry_after is not None else {}
