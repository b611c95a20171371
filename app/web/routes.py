"""Browser pages: GraphiQL and the model download dashboard, with every asset served locally.

Nothing here reaches the internet: the JS/CSS bundles are vendored under static/vendor/
(see scripts/build_web_assets.sh) and each page carries a Content-Security-Policy that lets
the browser load code and open connections only to this server.
"""

from __future__ import annotations

import hashlib
import html
from functools import cache
from pathlib import Path
from string import Template

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"
STATIC_PREFIX = "/static"

# 'self' covers same-origin ws:/wss: in CSP3 browsers; styles need 'unsafe-inline' only for
# GraphiQL, whose components inject <style> tags.
_CSP = (
    "default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "font-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; style-src {style}"
)
GRAPHIQL_CSP = _CSP.format(style="'self' 'unsafe-inline'")
DASHBOARD_CSP = _CSP.format(style="'self'")


@cache
def asset_url(relative: str) -> str:
    """URL of a static file with a content hash, so a re-vendored bundle is never served stale."""
    digest = hashlib.sha256((STATIC_DIR / relative).read_bytes()).hexdigest()[:12]
    return f"{STATIC_PREFIX}/{relative}?v={digest}"


@cache
def _template(name: str) -> Template:
    return Template((WEB_DIR / name).read_text(encoding="utf-8"))


def _render(name: str, graphql_path: str, csp: str, assets: dict[str, str]) -> str:
    values = {key: html.escape(asset_url(path), quote=True) for key, path in assets.items()}
    return _template(name).substitute(
        graphql_path=html.escape(graphql_path, quote=True),
        csp=html.escape(csp, quote=True),
        **values,
    )


def graphiql_html(graphql_path: str = "/graphql") -> str:
    """The GraphiQL page; queries go over HTTP POST, subscriptions over graphql-transport-ws."""
    return _render(
        "graphiql.html",
        graphql_path,
        GRAPHIQL_CSP,
        {
            "graphiql_css": "vendor/graphiql.min.css",
            "page_css": "graphiql-page.css",
            "react_js": "vendor/react.production.min.js",
            "react_dom_js": "vendor/react-dom.production.min.js",
            "graphiql_js": "vendor/graphiql.min.js",
            "init_js": "graphiql-init.js",
        },
    )


def dashboard_html(graphql_path: str = "/graphql") -> str:
    """The dashboard: a `models` query, then the `modelDownloadProgress` subscription; beside them
    the jobs: a `jobs` query, then the `jobProgress` subscription."""
    return _render(
        "dashboard.html",
        graphql_path,
        DASHBOARD_CSP,
        {
            "dashboard_css": "dashboard.css",
            "graphql_ws_js": "vendor/graphql-ws.min.js",
            "dashboard_js": "dashboard.js",
            "jobs_css": "dashboard-jobs.css",
            "jobs_js": "dashboard-jobs.js",  # running and recent jobs: `jobs`, then `jobProgress`
        },
    )


def dashboard_route(path: str = "/dashboard", graphql_path: str = "/graphql") -> Route:
    async def dashboard(request: Request) -> HTMLResponse:
        return HTMLResponse(dashboard_html(graphql_path), headers={"Content-Security-Policy": DASHBOARD_CSP})

    return Route(path, dashboard, methods=["GET"], name="dashboard")


def static_routes() -> list[BaseRoute]:
    return [Mount(STATIC_PREFIX, app=StaticFiles(directory=STATIC_DIR), name="static")]
