"""create_app(settings) -> the Starlette application: GraphQL, health, metrics, pages."""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL

from app import __version__
from app.graphql.context import Context
from app.graphql.http import GraphQLHttpEdge
from app.graphql.websockets import LegacyWSHandler, TransportWSHandler
from app.graphql.schema import build_schema
from app.lifespan import open_services
from app.metrics import register_process_metrics, render_metrics
from app.services.container import Services
from app.settings import Settings
from app.web.routes import dashboard_route, graphiql_html, static_routes


class CitadelGraphQL(GraphQLHttpEdge, GraphQL):
    graphql_transport_ws_handler_class = TransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        return Context(request=request, response=response, services=request.app.state.services)

    async def render_graphql_ide(self, request: Request) -> Response:
        return HTMLResponse(graphiql_html(request.url.path))


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()
    register_process_metrics()
    graphql = CitadelGraphQL(
        build_schema(settings.limits),
        graphql_ide="graphiql" if settings.server.graphiql else None,
        subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL),
        keep_alive=True,
        keep_alive_interval=15,
        connection_init_wait_timeout=timedelta(seconds=settings.server.ws_init_timeout_seconds),
        max_subscriptions_per_connection=settings.server.max_subscriptions_per_connection,
    )
    graphql.max_body_bytes = settings.request_body_limit

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_services(settings) as services:
            app.state.services = services
            yield

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "version": __version__})

    async def readyz(request: Request) -> JSONResponse:
        services: Services = request.app.state.services
        report = await services.health.check()
        models = services.models
        default = models.status(models.effective_default)
        ready = report.status == "ok" and default is not None and _state(default) == "READY"
        body = {
            "ready": ready,
            "status": report.status,
            "defaultModel": models.effective_default,
            "configuredDefaultModel": settings.default_model,
            "dependencies": [
                {"name": d.name, "ok": d.ok, "latencyMs": d.latency_ms, "detail": d.detail} for d in report.dependencies
            ],
            "models": [_model_json(s) for s in models.statuses()],
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        return Response(render_metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [
        Route("/graphql", graphql, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", graphql),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        dashboard_route(),
        *static_routes(),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.settings = settings
    return app


def _state(status: Any) -> str:
    return getattr(status.state, "value", status.state)


def _model_json(status: Any) -> dict[str, Any]:
    return {
        "name": status.name,
        "backend": status.backend,
        "state": _state(status),
        "attempts": status.attempts,
        "maxAttempts": status.max_attempts,
        "bytesDone": status.bytes_done,
        "bytesTotal": status.bytes_total,
        "device": status.device,
        "fallbackFor": status.fallback_for,
        "lastError": status.last_error,
    }
