"""A frontend page on another origin, in headless Chromium: on a listed origin it calls /graphql
with fetch (a CORS preflight, since it sends Authorization) and subscribes over
graphql-transport-ws; on an unlisted origin the browser is refused both. The dashboard asks
for a key when keys are required."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e.access_support import PAGE_PORT, AccessServer, create_key
from tests.support.browser import launch_chromium, offline_page
from tests.support.server import free_port

pytestmark = [pytest.mark.timeout(300), pytest.mark.browser, pytest.mark.slow]

# What a frontend app does: one query over fetch, then a subscription; the outcome lands in window.__result.
FRONTEND_PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>frontend</title></head><body>
<script>
(async function () {
  const params = new URLSearchParams(location.search);
  const api = params.get("api"), key = params.get("key");
  const out = {};
  try {
    const response = await fetch(api + "/graphql", {
      method: "POST",
      headers: {"Content-Type": "application/json", "Authorization": "Bearer " + key},
      body: JSON.stringify({query: "{ me { name scopes } }"}),
    });
    out.fetch = await response.json();
  } catch (error) {
    out.fetch = "refused: " + error;
  }
  out.ws = await new Promise((resolve) => {
    const seen = [];
    const ws = new WebSocket(api.replace("http:", "ws:") + "/graphql", "graphql-transport-ws");
    ws.onopen = () => ws.send(JSON.stringify({type: "connection_init", payload: {authorization: "Bearer " + key}}));
    ws.onerror = () => seen.push("error");
    ws.onclose = (event) => resolve({seen, closed: event.code});
    ws.onmessage = (message) => {
      const msg = JSON.parse(message.data);
      seen.push(msg.type);
      if (msg.type === "connection_ack") {
        ws.send(JSON.stringify({id: "1", type: "subscribe",
                                payload: {query: "subscription { modelDownloadProgress { model state } }"}}));
      } else if (msg.type === "next") {
        ws.close();
        resolve({seen, first: msg.payload.data.modelDownloadProgress});
      }
    };
  });
  window.__result = out;
})();
</script></body></html>"""


class _PageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(FRONTEND_PAGE)))
        self.end_headers()
        self.wfile.write(FRONTEND_PAGE)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def page_server(port: int) -> Iterator[None]:
    httpd = ThreadingHTTPServer(("127.0.0.1", port), _PageHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
async def browser():
    async with launch_chromium() as chromium:
        yield chromium


async def _run_frontend(browser, page_url: str, server: AccessServer, key: str) -> dict:
    async with offline_page(browser) as (page, watch):
        await page.goto(f"{page_url}/?api={server.url}&key={key}")
        await page.wait_for_function("() => window.__result !== undefined", timeout=30_000)
        return await page.evaluate("() => window.__result")


async def test_a_page_on_a_listed_origin_fetches_and_subscribes(browser, access_server: AccessServer):
    key = create_key(access_server, "frontend", ["READ"])["secret"]
    with page_server(PAGE_PORT):
        result = await _run_frontend(browser, f"http://127.0.0.1:{PAGE_PORT}", access_server, key)
    assert result["fetch"] == {"data": {"me": {"name": "frontend", "scopes": ["READ"]}}}
    assert result["ws"]["seen"][:2] == ["connection_ack", "next"], result
    assert result["ws"]["first"]["model"] and result["ws"]["first"]["state"]


async def test_a_page_on_an_unlisted_origin_is_refused_both(browser, access_server: AccessServer):
    key = create_key(access_server, "frontend-elsewhere", ["READ"])["secret"]
    port = free_port()
    with page_server(port):
        result = await _run_frontend(browser, f"http://localhost:{port}", access_server, key)
    assert isinstance(result["fetch"], str) and result["fetch"].startswith("refused: TypeError"), result
    assert "connection_ack" not in result["ws"]["seen"] and "next" not in result["ws"]["seen"], result
    assert result["ws"]["closed"] == 1006  # the handshake itself was refused (HTTP 403)


async def test_the_dashboard_asks_for_a_key_and_then_connects(browser, access_server: AccessServer):
    key = create_key(access_server, "dashboard-viewer", ["READ"])["secret"]
    async with offline_page(browser) as (page, watch):
        await page.goto(access_server.url + "/dashboard")
        form = page.locator("#key-form")
        await form.wait_for(state="visible", timeout=20_000)
        await page.fill("#key-input", key)
        await page.click("#key-form button[type=submit]")
        await page.locator("#connection[data-state=connected]").wait_for(timeout=20_000)
        await page.locator("article.model").first.wait_for(timeout=20_000)
        assert await form.is_hidden()
        assert watch.off_host() == []


async def test_graphiql_sends_the_key_from_its_headers_tab_over_http_and_websocket(browser, access_server: AccessServer):
    import re

    from tests.e2e.test_browser import RESULT_PANE, open_graphiql, type_query

    key = create_key(access_server, "graphiql-user", ["READ"])["secret"]
    async with offline_page(browser) as (page, watch):
        await open_graphiql(page, access_server)
        await page.get_by_role("button", name=re.compile("^Headers$")).click()
        headers_editor = page.locator(".graphiql-editor-tool .CodeMirror").last
        await headers_editor.wait_for(timeout=10_000)
        await page.evaluate(
            "(args) => document.querySelectorAll('.graphiql-editor-tool .CodeMirror')[args.i].CodeMirror.setValue(args.v)",
            {"i": await page.locator(".graphiql-editor-tool .CodeMirror").count() - 1,
             "v": '{"Authorization": "Bearer %s"}' % key},
        )  # fmt: skip
        for query, expected in (("{ me { name } }", '"graphiql-user"'), ("subscription { modelDownloadProgress { model state } }", '"modelDownloadProgress"')):
            await type_query(page, query)
            await page.get_by_role("button", name=re.compile("Execute query")).click()
            await page.locator(RESULT_PANE).get_by_text(expected).first.wait_for(timeout=30_000)
            assert "UNAUTHENTICATED" not in await page.locator(RESULT_PANE).inner_text()
        assert watch.off_host() == []
