"""The HTTP edge of /graphql: what a request body must be before anything parses it further.

- A body larger than the limit gets 413 before it is read (Content-Length), or as soon as the
  stream passes the limit (chunked bodies); /v1/embeddings reads its body the same way.
- `refuse_before_body` may answer before the body is read (app/main.py: a POST without a valid
  key, where keys are required, gets 401 and nothing it sends is read).
- A body that is not UTF-8, not JSON, nested too deep or not a JSON object gets 400 with a
  GraphQL-shaped error, as does every other refusal of the view (never a plain-text body).
- Subscriptions run over WebSocket, or over Server-Sent Events (the graphql-sse protocol, distinct
  connections mode: `Accept: text/event-stream`), with the same keys, rules and per-key cap as
  WebSocket operations; over plain POST/GET they are refused with 400.
- A client that hangs up mid-body gets nothing, and the log gets no traceback.
- GraphQL-over-HTTP: `application/graphql-response+json` when the client accepts it, with 400
  for a request that never executed (parse or validation failure), as that spec asks; except
  PersistedQueryNotFound, 200 as Apollo's clients expect before they retry with the text.
- The document that runs is `query`, or the persisted query or trusted document named by
  `extensions.persistedQuery` or `documentId` (OperationRules.document, app/graphql/persisted.py).
- File uploads (`ingestFiles`): a `multipart/form-data` POST (the GraphQL multipart request spec)
  may be up to CITADEL_LIMITS__MAX_UPLOAD_BYTES instead of the body limit; its files are spooled
  to disk under `<data dir>/uploads` as they arrive (UploadMultiPartParser), never held whole in
  memory. CSRF: a form POST is a "simple" request a page on any site can make without a CORS
  preflight, so a multipart request must carry a header no plain form can
  (`Apollo-Require-Preflight`, `X-Apollo-Operation-Name` or `GraphQL-Preflight`), else 400 before
  its body is read; the key is checked first, as for every POST.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from tempfile import SpooledTemporaryFile
from contextlib import aclosing
from typing import Any

from cross_web import HTTPException, StarletteRequestAdapter
from cross_web.request import FormData
from graphql.error import GraphQLError
from loguru import logger
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from strawberry.exceptions import MissingQueryError
from strawberry.http import GraphQLRequestData
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from app.errors import CitadelError
from app.graphql.errors import public_error
from app.graphql.persisted import DOCUMENT_ID_KEY, NOT_FOUND_CODE
from app.graphql.websockets import QUOTA_REACHED, caller_of

JSON_MEDIA_TYPE = "application/json"
GRAPHQL_RESPONSE_MEDIA_TYPE = "application/graphql-response+json"
# A GraphQL request is {"query", "variables": {...}}: a filter or metadata inside variables is
# bounded at app/validation.MAX_JSON_DEPTH; the envelope adds a few levels.
MAX_BODY_DEPTH = 40
# Operations a plain HTTP request runs; subscriptions need a WebSocket or an SSE stream.
HTTP_OPERATIONS = {"GET": {OperationType.QUERY}, "POST": {OperationType.QUERY, OperationType.MUTATION}}
# Over Server-Sent Events (graphql-sse) subscriptions run too.
STREAM_OPERATIONS = {
    "GET": {OperationType.QUERY, OperationType.SUBSCRIPTION},
    "POST": {OperationType.QUERY, OperationType.MUTATION, OperationType.SUBSCRIPTION},
}
SUBSCRIPTION_OVER_PLAIN_HTTP = (
    "a subscription does not run as a plain HTTP request: open a WebSocket to /graphql (subprotocol "
    "graphql-transport-ws, or the legacy graphql-ws), or send this request with `Accept: text/event-stream` "
    "to receive it as Server-Sent Events (graphql-sse)"
)


class BadRequestBody(json.JSONDecodeError):
    """A body (or WebSocket frame) that is not a JSON object we accept.

    A JSONDecodeError, so the WebSocket handlers close with 4400 as for any non-JSON frame."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, "", 0)
        self.reason = reason


class BodyTooLarge(Exception):
    def __init__(self, limit: int, upload: bool = False) -> None:
        setting = "CITADEL_LIMITS__MAX_UPLOAD_BYTES" if upload else "CITADEL_SERVER__MAX_BODY_BYTES"
        super().__init__(f"the request body is over the limit of {limit} bytes ({setting})")
        self.message = str(self)


def decode_request_json(data: str | bytes) -> dict[str, Any]:
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequestBody("the request body is not valid UTF-8") from None
    try:
        value = json.loads(data)
    except RecursionError:
        raise BadRequestBody(f"the request body is nested more than {MAX_BODY_DEPTH} levels deep") from None
    except json.JSONDecodeError as exc:
        raise BadRequestBody(f"the request body is not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise BadRequestBody("the request body must be a JSON object")
    if _depth_exceeds(value, MAX_BODY_DEPTH):
        raise BadRequestBody(f"the request body is nested more than {MAX_BODY_DEPTH} levels deep")
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values() if isinstance(child, (dict, list)))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item if isinstance(child, (dict, list)))
    return False


def wants_graphql_response(headers: Mapping[str, str]) -> bool:
    return GRAPHQL_RESPONSE_MEDIA_TYPE in (headers.get("accept") or "")


def error_response(status: int, message: str, code: str, headers: Mapping[str, str]) -> Response:
    media_type = GRAPHQL_RESPONSE_MEDIA_TYPE if wants_graphql_response(headers) else JSON_MEDIA_TYPE
    body = {"errors": [{"message": message, "extensions": {"code": code}}]}
    return Response(json.dumps(body), status_code=status, media_type=media_type)


def _code_for_status(status: int) -> str:
    return {404: "NOT_FOUND", 413: "BAD_INPUT", 405: "BAD_INPUT", 429: "RATE_LIMITED"}.get(status, "BAD_INPUT")


def refuse_declared_over(scope: Scope, limit: int, upload: bool = False) -> None:
    """BodyTooLarge for a request whose Content-Length is over `limit`: nothing of it is read."""
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                return
            if declared > limit:
                raise BodyTooLarge(limit, upload)
            return


def capped_receive(receive: Receive, limit: int, upload: bool = False) -> Receive:
    """Counts body bytes as they arrive: BodyTooLarge once past the limit (chunked uploads)."""
    seen = 0

    async def receive_capped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit, upload)
        return message

    return receive_capped


async def read_capped(request: Request, limit: int) -> bytes:
    """The whole body of a plain Starlette route, read as capped_receive reads /graphql's."""
    refuse_declared_over(request.scope, limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)


PREFLIGHT_HEADERS = ("apollo-require-preflight", "x-apollo-operation-name", "graphql-preflight")
NO_PREFLIGHT = (
    "a multipart request (a file upload) must carry a header that a plain HTML form cannot send, so that no "
    "other site can post one on a user's behalf (CSRF): add `Apollo-Require-Preflight: true` (or a non-empty "
    "`X-Apollo-Operation-Name` or `GraphQL-Preflight`)"
)
UPLOAD_SPOOL_BYTES = 64 * 1024  # an uploaded file past this goes to a file under <data dir>/uploads


def _declares_multipart(scope: Scope) -> bool:
    """Whether the raw headers say multipart/form-data (no header dict built: every request asks)."""
    for name, value in scope.get("headers") or ():
        if name == b"content-type":
            return value[:19].lower() == b"multipart/form-data"
    return False


def is_multipart(headers: Mapping[str, str]) -> bool:
    return (headers.get("content-type") or "").split(";")[0].strip().lower() == "multipart/form-data"


class UploadMultiPartParser(MultiPartParser):
    """Starlette's parser, with each uploaded file spooled to `upload_dir` (not the system's temp dir)."""

    spool_max_size = UPLOAD_SPOOL_BYTES

    def __init__(self, *args: Any, upload_dir: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.upload_dir = upload_dir

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        upload = self._current_part.file
        if upload is not None:
            default = self._files_to_close_on_error.pop()
            default.close()  # still empty, in memory
            spooled: Any = SpooledTemporaryFile(max_size=self.spool_max_size, dir=self.upload_dir)
            self._files_to_close_on_error.append(spooled)
            upload.file = spooled


class UploadRequestAdapter(StarletteRequestAdapter):
    async def get_form_data(self) -> FormData:
        request = self._request
        upload_dir = Path(request.app.state.settings.data_dir) / "uploads"
        upload_dir.mkdir(parents=True, exist_ok=True)
        parser = UploadMultiPartParser(request.headers, request.stream(), upload_dir=upload_dir)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise HTTPException(400, f"the multipart body is malformed: {exc.message}") from None
        request._form = form  # closed with the request
        return FormData(files=form, form=form)


class GraphQLHttpEdge:
    """Mixed into the Strawberry ASGI view (app/main.py) ahead of strawberry.asgi.GraphQL."""

    max_body_bytes: int = 1 << 20
    max_upload_bytes: int = 1 << 30
    request_adapter_class = UploadRequestAdapter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)  # type: ignore[misc]
            return
        upload = scope.get("method") == "POST" and _declares_multipart(scope)
        limit = self.max_upload_bytes if upload else self.max_body_bytes
        request = Request(scope, capped_receive(receive, limit, upload))
        try:
            refuse_declared_over(scope, limit, upload)
            response = await self.refuse_before_body(request)
            if response is None and upload and not any((request.headers.get(h) or "").strip() for h in PREFLIGHT_HEADERS):
                response = error_response(400, NO_PREFLIGHT, "BAD_INPUT", request.headers)
            if response is None:
                try:
                    response = await self.run(request)  # type: ignore[attr-defined]
                finally:
                    if upload:
                        await request.close()  # the spooled files
            else:
                response.headers["connection"] = "close"  # its body is never read
        except BodyTooLarge as exc:
            hint = "upload fewer or smaller files per request" if upload else "send a large ingest as several smaller calls (or startIngestJob)"
            message = f"{exc.message}: {hint}"
            response = error_response(413, message, "BAD_INPUT", request.headers)
            response.headers["connection"] = "close"  # the rest of the body is never read
        except HTTPException as exc:
            reason = exc.reason
            if isinstance(exc.__cause__, BadRequestBody):
                reason = exc.__cause__.reason
            response = error_response(exc.status_code, reason, _code_for_status(exc.status_code), request.headers)
        except ClientDisconnect:
            logger.debug("client left before sending its whole request body")
            return
        await response(scope, receive, send)

    def should_render_graphql_ide(self, request: Any) -> bool:
        # A GET naming a persisted or trusted document has no `query`, and is not a browser.
        params = request.query_params
        if "extensions" in params or DOCUMENT_ID_KEY in params:
            return False
        return super().should_render_graphql_ide(request)  # type: ignore[misc]

    async def refuse_before_body(self, request: Request) -> Response | None:
        """An answer given before the body is read, or None to go on and read it."""
        return None

    def decode_json(self, data: str | bytes) -> object:
        return decode_request_json(data)

    async def execute_operation(self, request: Any, request_adapter: Any, request_data: Any, context: Any,
                                root_value: Any, sub_response: Any) -> Any:
        transport = isinstance(request_data, GraphQLRequestData) and self._get_stream_transport(request_data.protocol)  # type: ignore[attr-defined]
        if not transport:
            return await super().execute_operation(  # type: ignore[misc]
                request, request_adapter, request_data, context, root_value, sub_response
            )
        # A stream (graphql-sse): the document as for any operation, one of the caller's
        # operation slots (shared with its WebSockets) for as long as the stream runs.
        try:
            query = await self.schema.rules.document(context, request_data.query, request_data.extensions)  # type: ignore[attr-defined]
        except CitadelError as exc:
            return _once(public_error(GraphQLError(exc.message, original_error=exc)))
        if not query:
            raise HTTPException(400, "No GraphQL query found in the request")
        return self._stream(query, request_data, context, root_value, STREAM_OPERATIONS.get(request_adapter.method, {OperationType.QUERY}))

    async def _stream(self, query: str, request_data: Any, context: Any, root_value: Any,
                      allowed: set[OperationType]) -> AsyncIterator[Any]:
        # The slot is taken once the response starts streaming and given back however it ends
        # (completed, failed, the client gone), so a stream never started holds none.
        quota = getattr(self, "operation_quota", None)
        caller = caller_of(context)
        if quota is not None and not quota.try_take(caller):
            yield ExecutionResult(data=None, errors=[QUOTA_REACHED])
            return
        try:
            stream = await self.schema.stream(  # type: ignore[attr-defined]
                query,
                variable_values=request_data.variables,
                context_value=context,
                root_value=root_value,
                operation_name=request_data.operation_name,
                operation_extensions=request_data.extensions,
                allowed_operation_types=allowed,
            )
            async with aclosing(stream):
                async for result in stream:
                    yield result
        finally:
            if quota is not None:
                quota.give_back(caller)

    async def execute_single(self, request: Any, request_adapter: Any, sub_response: Any, context: Any,
                             root_value: Any, request_data: Any) -> Any:
        # Strawberry lets POST/GET carry subscriptions (for its streaming transports, which
        # execute_operation sends to _stream); run as a query they fail as INTERNAL. A plain
        # request runs only queries and mutations.
        allowed = HTTP_OPERATIONS.get(request_adapter.method, {OperationType.QUERY})
        try:
            query = await self.schema.rules.document(context, request_data.query, request_data.extensions)  # type: ignore[attr-defined]
        except CitadelError as exc:
            return ExecutionResult(data=None, errors=[public_error(GraphQLError(exc.message, original_error=exc))])
        try:
            return await self.schema.execute(  # type: ignore[attr-defined]
                query,
                root_value=root_value,
                variable_values=request_data.variables,
                context_value=context,
                operation_name=request_data.operation_name,
                allowed_operation_types=allowed,
                operation_extensions=request_data.extensions,
            )
        except CannotGetOperationTypeError as exc:
            raise HTTPException(400, exc.as_http_error_reason()) from exc
        except InvalidOperationTypeError as exc:
            if exc.operation_type is OperationType.SUBSCRIPTION:
                raise HTTPException(400, SUBSCRIPTION_OVER_PLAIN_HTTP) from exc
            raise HTTPException(400, exc.as_http_error_reason(request_adapter.method)) from exc
        except MissingQueryError as exc:
            raise HTTPException(400, "No GraphQL query found in the request") from exc

    async def parse_http_body(self, request_adapter: Any) -> Any:
        data = await super().parse_http_body(request_adapter)  # type: ignore[misc]
        if isinstance(data, GraphQLRequestData) and data.query is None:
            # A trusted document named by a top-level `documentId` (GraphQL Codegen, Relay):
            # Strawberry keeps no unknown keys, so it travels on in the extensions.
            if request_adapter.method == "GET":
                raw: Any = request_adapter.query_params
            elif is_multipart(request_adapter.headers):
                raw = None  # its operations were read with the files
            else:
                raw = self.parse_json(await request_adapter.get_body())  # type: ignore[attr-defined]
            document_id = raw.get(DOCUMENT_ID_KEY) if isinstance(raw, Mapping) else None
            if document_id is not None:
                data.extensions = {**(data.extensions or {}), DOCUMENT_ID_KEY: document_id}
        return data

    async def process_result(self, request: Request, result: Any) -> Any:
        response = await super().process_result(request, result)  # type: ignore[misc]
        if wants_graphql_response(request.headers) and _is_request_error(response) and not _persisted_query_not_found(response):
            # Nothing executed: under this media type the spec wants no data entry and a 4xx.
            response.pop("data", None)
        return response

    def create_response(self, response_data: Any, sub_response: Response) -> Response:
        response: Response = super().create_response(response_data, sub_response)  # type: ignore[misc]
        if getattr(sub_response, "_graphql_response_media", False):
            response.headers["content-type"] = GRAPHQL_RESPONSE_MEDIA_TYPE
            if isinstance(response_data, dict) and "data" not in response_data and not sub_response.status_code:
                response.status_code = 400
        return response

    async def get_sub_response(self, request: Request) -> Response:
        sub_response: Response = await super().get_sub_response(request)  # type: ignore[misc]
        sub_response._graphql_response_media = wants_graphql_response(request.headers)  # type: ignore[attr-defined]
        return sub_response


async def _once(error: GraphQLError) -> AsyncIterator[ExecutionResult]:
    """A stream of one result, an error: what graphql-sse sends for an operation that never started."""
    yield ExecutionResult(data=None, errors=[error])


def _persisted_query_not_found(response: Any) -> bool:
    return any((e.get("extensions") or {}).get("code") == NOT_FOUND_CODE for e in response.get("errors") or ())


def _is_request_error(response: Any) -> bool:
    # Field errors carry a path; errors before execution (parse, validation, cost) do not.
    errors = response.get("errors") if isinstance(response, dict) else None
    return bool(errors) and response.get("data") is None and all("path" not in e for e in errors)
