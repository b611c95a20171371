"""The pages as served, no browser needed: local assets only, escaping, vendored checksums, routes.

The same pages in a real browser against the live server: tests/e2e/test_browser.py.
"""

from __future__ import annotations

import hashlib
import html
import re

import httpx
import pytest
from starlette.applications import Starlette

from app.web.routes import STATIC_DIR, asset_url, dashboard_html, dashboard_route, graphiql_html, static_routes


def _asset_refs(page: str) -> list[str]:
    return [html.unescape(m) for m in re.findall(r'(?:src|href)="([^"]*)"', page)]


@pytest.mark.parametrize("render", [graphiql_html, dashboard_html])
def test_pages_load_only_vendored_local_assets(render) -> None:
    page = render("/graphql")
    refs = _asset_refs(page)
    assert len(refs) >= 3
    for ref in refs:
        if ref == "data:,":  # empty favicon, so the browser does not ask for /favicon.ico
            continue
        assert ref.startswith("/static/"), ref
        assert (STATIC_DIR / ref.removeprefix("/static/").split("?")[0]).is_file(), ref
    assert "default-src &#x27;self&#x27;" in page  # CSP meta: the browser may load nothing else


def test_graphql_path_is_escaped_into_the_page() -> None:
    page = graphiql_html('/gql"><script>alert(1)</script>')
    assert "<script>alert(1)" not in page
    assert 'data-graphql-path="/gql&quot;&gt;&lt;script&gt;' in page


def test_vendored_bundles_match_recorded_checksums_and_stay_small() -> None:
    vendor = STATIC_DIR / "vendor"
    recorded = {
        name.removeprefix("./"): digest
        for digest, name in re.findall(r"^([0-9a-f]{64})\s+(\S+)$", (vendor / "VERSIONS.txt").read_text(), re.MULTILINE)
    }
    assert set(recorded) == {"graphiql.min.js", "graphiql.min.css", "react.production.min.js",
                             "react-dom.production.min.js", "graphql-ws.min.js"}
    for name, digest in recorded.items():
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
    assert sum(f.stat().st_size for f in STATIC_DIR.rglob("*") if f.is_file()) < 5 * 1024 * 1024


async def test_routes_serve_the_dashboard_and_static_files() -> None:
    app = Starlette(routes=[dashboard_route(), *static_routes()])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        page = await client.get("/dashboard")
        assert page.status_code == 200
        assert "default-src 'self'" in page.headers["content-security-policy"]
        js = await client.get(asset_url("dashboard.js"))
        assert js.status_code == 200 and "javascript" in js.headers["content-type"]
        css = await client.get(asset_url("vendor/graphiql.min.css"))
        assert css.headers["content-type"].startswith("text/css")
        assert (await client.get("/static/%2e%2e/routes.py")).status_code == 404
