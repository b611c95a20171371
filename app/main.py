"""create_app(settings) -> the Starlette application: GraphQL, health, metrics, pages."""

from __future__ import annotations

import functools
import gc
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
import strawberry.http.async_base_view as strawberry_http_view
from strawberry.asgi import GraphQL
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL

from app import __version__
from app.graphql.context import Context
from app.graphql.schema import build_schema
from app.lifespan import open_services
from app.metrics import register_process_metrics, render_metrics
from app.services.container import Services
from app.settings import Settings
from app.web import json_codec
from app.web.json_codec import FastJSONResponse
from app.web.openai_api import openai_routes
from app.web.routes import dashboard_route, graphiql_html, static_routes


# Strawberry parses the Content-Type header with email.message for every request (~5% of a cached
# embed); clients send the same one or two values, so remember the last few answers.
strawberry_http_view.parse_content_type = functools.lru_cache(maxsize=64)(strawberry_http_view.parse_content_type)


class CitadelGraphQL(GraphQL):
    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        return Context(request=request, response=response, services=request.app.state.services)

    async def render_graphql_ide(self, request: Request) -> Response:
        return HTMLResponse(graphiql_html(request.url.path))

    def encode_json(self, data: object) -> str:
        # A str, not bytes: the WebSocket transport sends bytes as binary frames.
        return json_codec.dumps_str(data)

    def decode_json(self, data: str | bytes) -> object:
        return json_codec.loads(data)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()
    register_process_metrics()
    graphql = CitadelGraphQL(
        build_schema(settings.limits),
        graphql_ide="graphiql" if settings.server.graphiql else None,
        subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL),
        keep_alive=True,
        keep_alive_interval=15,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_services(settings) as services:
            app.state.services = services
            # Everything loaded so far (models, libraries) lives as long as the process: keep it
            # out of the collector's generations so collections under load stay cheap.
            gc.collect()
            gc.freeze()
            yield

    async def healthz(request: Request) -> JSONResponse:
        return FastJSONResponse({"status": "ok", "version": __version__})

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
        return FastJSONResponse(body, status_code=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        return Response(render_metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [
        Route("/graphql", graphql, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", graphql),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        *openai_routes(),
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
