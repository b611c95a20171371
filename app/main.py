"""create_app(settings) -> the Starlette application: GraphQL, health, metrics, pages."""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, AsyncIterator

from loguru import logger
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions import GRAPHQL_SSE_PROTOCOL, GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL

from app import __version__
from app.domain.models import ModelState
from app.graphql.context import Context
from app.graphql.http import GraphQLHttpEdge, error_response
from app.graphql.websockets import KeySockets, LegacyWSHandler, OperationQuota, TransportWSHandler
from app.graphql.schema import build_schema
from app.grpc.server import serving_grpc  # CITADEL_GRPC__ENABLED: gRPC beside HTTP, same loop
from app.inference.callers import CallerEdge
from app.lifespan import open_services
from app.metrics import register_process_metrics, render_metrics
from app.services.container import Services
from app.settings import Settings
from app.startup_checks import warn_unsafe_settings
from app.web.auth import (
    WS_TRY_AGAIN,
    AuthClosingWebSocketAdapter,
    authorize_http,
    http_secret,
    resolve_principal,
    ws_close_code,
    ws_secret,
)
from app.web import json_codec
from app.web.json_codec import FastJSONResponse
from app.web.openai_api import openai_routes
from app.web.rerank_api import rerank_routes
from app.web.routes import dashboard_route, graphiql_html, static_routes


class _StrawberryOriginRefusal(logging.Filter):
    """Drops Strawberry's line for a refused WebSocket origin: it tells operators to edit its
    `allowed_origins`, which they do not set; CitadelGraphQL logs one naming the setting instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Rejected WebSocket connection from origin")


logging.getLogger("strawberry.ws").addFilter(_StrawberryOriginRefusal())


class CitadelGraphQL(GraphQLHttpEdge, GraphQL):
    websocket_adapter_class = AuthClosingWebSocketAdapter  # type: ignore[assignment]
    graphql_transport_ws_handler_class = TransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler
    operation_quota: OperationQuota
    key_sockets: KeySockets

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        services: Services = request.app.state.services
        context = Context(request=request, response=response, services=services)
        if isinstance(request, Request):  # a WebSocket's key comes with connection_init
            caller = getattr(request.state, "caller", None)  # resolved by refuse_before_body
            context.principal, context.auth_error = caller or await resolve_principal(services, http_secret(request))
        return context

    async def refuse_before_body(self, request: Request) -> Response | None:
        """Where keys are required, a POST without a valid key gets 401 (503 when the key cannot be
        checked now) before its body is read: such a client cannot make the server read anything."""
        services: Services = request.app.state.services
        if request.method != "POST" or not services.settings.auth_required:
            return None
        principal, error = request.state.caller = await resolve_principal(services, http_secret(request))
        if error is not None:
            return error_response(503, error.message, error.code, request.headers)
        if principal.kind != "rejected":
            return None
        response = error_response(401, principal.reason or "a valid API key is required", "UNAUTHENTICATED", request.headers)
        response.headers["www-authenticate"] = "Bearer"
        return response

    async def on_ws_connect(self, context: Context) -> Any:
        """No subscription runs before this accepts the connection's key."""
        secret = ws_secret(context.request, context.connection_params)
        context.ws_secret = secret
        context.principal, context.auth_error = await resolve_principal(context.services, secret)
        if context.auth_error is not None or context.principal.kind == "rejected":
            code = WS_TRY_AGAIN if context.auth_error is not None else ws_close_code(context.principal)
            context.request.state.reject_code = code
            raise ConnectionRejectionError({"message": context.principal.reason})
        return await super().on_ws_connect(context)

    def is_websocket_origin_allowed(self, request: Any, origin: str) -> bool:
        """Strawberry's check (CITADEL_SERVER__CORS_ORIGINS, or `*`), and a refusal an operator can act on."""
        if super().is_websocket_origin_allowed(request, origin):
            return True
        listed = ", ".join(sorted(self.allowed_origins)) or "none"
        logger.warning(
            "refused a WebSocket to /graphql (403) from a page on {!r}: that origin is not in "
            "CITADEL_SERVER__CORS_ORIGINS (now: {}). If pages there should subscribe, add it as "
            "scheme://host[:port] (comma-separated, e.g. CITADEL_SERVER__CORS_ORIGINS={}) and restart",
            origin,
            listed,
            ",".join([*sorted(self.allowed_origins), origin]),
        )
        return False

    async def render_graphql_ide(self, request: Request) -> Response:
        return HTMLResponse(graphiql_html(request.url.path))

    def encode_json(self, data: object) -> str:
        # A str, not bytes: the WebSocket transport sends bytes as binary frames.
        return json_codec.dumps_str(data)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()
    register_process_metrics()
    warn_unsafe_settings(settings)
    graphql = CitadelGraphQL(
        build_schema(settings.limits),
        graphql_ide="graphiql" if settings.server.graphiql else None,
        # graphql-sse: subscriptions over Server-Sent Events where WebSockets are blocked (app/graphql/http.py).
        subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL, GRAPHQL_SSE_PROTOCOL),
        keep_alive=True,
        keep_alive_interval=15,
        connection_init_wait_timeout=timedelta(seconds=settings.server.ws_init_timeout_seconds),
        max_subscriptions_per_connection=settings.server.max_subscriptions_per_connection,
        # Cross-site WebSocket hijacking: a page on another origin connects only when listed.
        allowed_origins=settings.server.cors_origins,
        # ingestFiles: the GraphQL multipart request spec, with the CSRF header check and the upload
        # limit of app/graphql/http.py (files spooled to disk under the data dir).
        multipart_uploads_enabled=True,
    )
    graphql.max_body_bytes = settings.request_body_limit
    graphql.max_upload_bytes = settings.limits.max_upload_bytes
    graphql.operation_quota = OperationQuota(settings.server.max_subscriptions_per_key)
    graphql.key_sockets = KeySockets()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_services(settings) as services:
            app.state.services = services
            async with (
                graphql.key_sockets.watching(services.keys, settings.auth.key_cache_seconds),
                serving_grpc(services, graphql.operation_quota),  # off unless CITADEL_GRPC__ENABLED
            ):
                # Everything loaded so far (models, libraries) lives as long as the process: keep
                # it out of the collector's generations so collections under load stay cheap.
                gc.collect()
                gc.freeze()
                yield

    async def healthz(request: Request) -> JSONResponse:
        return FastJSONResponse({"status": "ok", "version": __version__})

    async def readyz(request: Request) -> JSONResponse:
        """Needs no key; only an ADMIN one (or none where keys are not required) sees paths,
        addresses and errors in full."""
        services: Services = request.app.state.services
        principal, _ = await resolve_principal(services, http_secret(request))
        shown = services.catalog.disclosure(principal)
        report = shown.report(await services.health.check())
        models = services.models
        default = models.status(models.effective_default)
        ready = report.status == "ok" and default.state is ModelState.READY
        body = {
            "ready": ready,
            "status": report.status,
            "replica": settings.replica,
            "defaultModel": models.effective_default,
            "configuredDefaultModel": settings.default_model,
            "dependencies": [
                {"name": d.name, "ok": d.ok, "latencyMs": d.latency_ms, "detail": d.detail} for d in report.dependencies
            ],
            "models": [shown.errors(s).to_readyz() for s in models.statuses()],
        }
        return FastJSONResponse(body, status_code=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        if settings.auth_required:
            services: Services = request.app.state.services
            secret = http_secret(request)
            principal, error = await resolve_principal(services, secret)
            if error is not None or not services.keys.metrics_allowed(secret, principal):
                return JSONResponse(
                    {"error": "UNAUTHENTICATED", "message": "/metrics needs an ADMIN key or CITADEL_AUTH__METRICS_TOKEN"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return Response(render_metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [
        Route("/graphql", graphql, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", graphql),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        *openai_routes(authorize_http),
        *rerank_routes(authorize_http),  # Cohere's /v1/rerank, TEI's /rerank
        dashboard_route(),
        *static_routes(),
    ]
    middleware = [Middleware(CallerEdge), *cors_middleware(settings)]  # fair shares of the model; hang-ups
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware)
    app.state.settings = settings
    return app


def cors_middleware(settings: Settings) -> list[Middleware]:
    """Preflights answered and only listed origins echoed. Keys travel in a header, not in
    cookies, so credentials are never allowed (and `*` is never paired with them)."""
    origins = settings.server.cors_origins
    if not origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            # The preflight headers a file upload must carry (app/graphql/http.py) are allowed cross-origin.
            allow_headers=["authorization", "content-type", "apollo-require-preflight", "x-apollo-operation-name", "graphql-preflight"],
            allow_credentials=False,
            max_age=600,
        )
    ]

