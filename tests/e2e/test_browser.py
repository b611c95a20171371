"""Browser tests of the pages a person uses: GraphiQL at /graphql and the download dashboard.

Headless Debian Chromium through Playwright, against the real server from the `live_server`
fixture (tests/e2e/conftest.py). Every request to a host other than localhost is blocked and
recorded, so these tests also prove the pages work with no internet.

CI needs, once per image: apt-get update && apt-get install -y chromium && pip install playwright
"""

from __future__ import annotations

import inspect
import json
import re

import httpx
import pytest

from app.domain.models import BUILTIN_DEFAULT_MODEL
from tests.e2e.conftest import BUNDLED
from tests.support.browser import launch_chromium, offline_page, png_size
from tests.support.server import artifact_path
from tests.support.polling import wait_until

pytestmark = [pytest.mark.timeout(300)]


def browser_test(test):
    return pytest.mark.browser(pytest.mark.slow(test))


HEALTH_QUERY = "{ health { status dependencies { name ok } } }"
SUBSCRIPTION = "subscription { modelDownloadProgress { model state attempt maxAttempts } }"
QUERY_EDITOR = ".graphiql-query-editor .CodeMirror"
RESULT_PANE = "section.result-window"


# ---- in a real browser against the live server (the pages as served: tests/unit/test_web_pages.py) ----


@pytest.fixture(scope="module")
async def browser():
    async with launch_chromium() as chromium:
        yield chromium


async def open_graphiql(page, live_server) -> None:
    response = await page.goto(live_server.url + "/graphql")
    assert response is not None and response.status == 200
    assert "text/html" in response.headers["content-type"]
    await page.wait_for_selector(QUERY_EDITOR, timeout=20_000)


async def type_query(page, query: str) -> None:
    """Replace the editor's content by typing, as a person would."""
    await page.click(QUERY_EDITOR)
    await page.keyboard.press("Control+A")
    await page.keyboard.press("Delete")
    # CodeMirror closes brackets as you type; typing without them lets it add each `}` itself.
    await page.keyboard.type(query.replace(" }", "").replace("}", ""), delay=10)
    await page.keyboard.press("Escape")  # close the autocomplete popup so it is not in the screenshot
    editor = f"document.querySelector({json.dumps(QUERY_EDITOR)}).CodeMirror"
    typed = await page.evaluate(f"{editor}.getValue()")
    assert _squash(typed) == _squash(query), typed
    # GraphiQL parses the editor after a short debounce and picks HTTP or WebSocket from that
    # parse; run only once it has caught up with what was typed.
    await page.wait_for_function(
        "(sel) => { const e = document.querySelector(sel).CodeMirror; return e.documentAST?.loc?.source.body === e.getValue(); }",
        arg=QUERY_EDITOR,
    )


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


@browser_test
async def test_graphiql_runs_a_typed_query_offline(browser, live_server) -> None:
    async with offline_page(browser) as (page, watch):
        await open_graphiql(page, live_server)
        await type_query(page, HEALTH_QUERY)
        await page.get_by_role("button", name=re.compile("Execute query")).click()

        result = page.locator(RESULT_PANE)
        await result.get_by_text('"status"').wait_for(timeout=30_000)
        text = await result.inner_text()
        assert '"health"' in text and '"dependencies"' in text
        assert '"errors"' not in text, text

        assert watch.off_host() == [], f"page tried to reach the internet: {watch.off_host()}"
        assert watch.errors == []  # includes CSP refusals, which stop a request before it is made
        assert any(u.startswith(live_server.url + "/static/vendor/graphiql.min.js") for u in watch.requests)

        shot = artifact_path("graphiql-health.png")
        await page.screenshot(path=str(shot))
        data = shot.read_bytes()
        assert png_size(data) == (1280, 800)
        assert len(data) > 10_000  # a rendered UI, not a blank page


@browser_test
async def test_graphiql_subscription_goes_over_websocket(browser, live_server) -> None:
    async with offline_page(browser) as (page, watch):
        await open_graphiql(page, live_server)
        await type_query(page, SUBSCRIPTION)
        await page.get_by_role("button", name=re.compile("Execute query")).click()

        # The subscription first replays every model's current state.
        await page.locator(RESULT_PANE).get_by_text('"modelDownloadProgress"').wait_for(timeout=30_000)
        ws_url = live_server.url.replace("http://", "ws://", 1) + "/graphql"
        assert ws_url in watch.websockets
        assert watch.off_host() == []
        assert watch.errors == []


@browser_test
async def test_dashboard_shows_models_and_a_live_connection(browser, live_server) -> None:
    async with offline_page(browser) as (page, watch):
        await page.goto(live_server.url + "/dashboard")
        await page.locator("#connection[data-state=connected]").wait_for(timeout=20_000)
        models = page.locator("article.model")
        await models.first.wait_for(timeout=20_000)

        expected = {m["name"] for m in _graphql(live_server, "{ models { name } }")["models"]}
        shown = set(await models.evaluate_all("els => els.map(e => e.dataset.model)"))
        assert shown == expected

        bars = page.get_by_role("progressbar")
        assert await bars.count() >= len(expected)
        for i in range(await bars.count()):
            bar = bars.nth(i)
            assert await bar.get_attribute("aria-label")
        # Attempts show only where a download was attempted ("2 of 3"), never "0/3".
        attempts = await page.locator("article.model .fact-attempt").evaluate_all(
            "els => els.filter(e => !e.hidden).map(e => e.querySelector('dd').textContent)"
        )
        assert all(re.fullmatch(r"[1-9]\d* of \d+(, .+)?", text) for text in attempts), attempts
        assert watch.off_host() == []
        assert watch.errors == []


@browser_test
async def test_dashboard_reconnects_after_the_socket_drops(browser, live_server) -> None:
    async with offline_page(browser) as (page, watch):
        sockets = []

        def proxy(ws) -> None:
            server = ws.connect_to_server()
            sockets.append((ws, server))

        await page.route_web_socket(re.compile(r"/graphql$"), proxy)
        await page.goto(live_server.url + "/dashboard")
        await page.locator("#connection[data-state=connected]").wait_for(timeout=20_000)
        await _record_connection_states(page)

        client_side, server_side = sockets[0]
        await client_side.close(code=1001, reason="test drops the socket")
        await server_side.close()

        await page.locator("#connection[data-state=connected]").wait_for(timeout=30_000)
        seen = await page.evaluate("window.__connectionStates")
        assert "disconnected" in seen and "reconnecting" in seen, seen
        assert seen[-1] == "connected", seen
        assert len(sockets) >= 2  # a second WebSocket was opened
        assert await page.locator("#connection-text").inner_text() == "Live"
        assert watch.errors == []


@browser_test
async def test_dashboard_shows_a_failed_models_error_once_and_no_attempts_for_a_bundled_one(browser, live_server) -> None:
    """The bundled model (READY, never downloaded) from the real server shows no attempt count; a
    FAILED event, added to the real subscription's stream as the server would send it, shows its
    error once (Last error) and its attempts worded as such."""
    error = "HTTP 404 from the hub: repository example/broken not found"
    failed = {"model": "example/broken", "replica": "", "state": "FAILED", "attempt": 3, "maxAttempts": 3,
              "file": None, "bytesDone": 0, "bytesTotal": None, "percent": None, "bytesPerSecond": None,
              "message": error, "at": "2026-12-06T07:00:00+00:00"}  # fmt: skip
    async with offline_page(browser) as (page, watch):
        subscriptions: list[tuple[object, str]] = []  # (socket, id) of the model progress subscription

        def proxy(ws) -> None:
            server = ws.connect_to_server()

            def from_page(message) -> None:
                frame = json.loads(message)
                # The dashboard also subscribes to jobProgress (over its own socket): only the models' stream counts.
                if frame.get("type") == "subscribe" and "modelDownloadProgress" in frame["payload"].get("query", ""):
                    subscriptions.append((ws, frame["id"]))
                server.send(message)

            ws.on_message(from_page)
            server.on_message(lambda message: ws.send(message))

        await page.route_web_socket(re.compile(r"/graphql$"), proxy)
        await page.goto(live_server.url + "/dashboard")
        await page.locator("#connection[data-state=connected]").wait_for(timeout=20_000)
        bundled = page.locator(f'article.model[data-model="{BUNDLED}"][data-state="READY"]').first
        await bundled.wait_for(timeout=20_000)
        assert await bundled.locator(".fact-attempt").is_hidden()
        assert "Attempt" not in await bundled.inner_text()

        await wait_until(lambda: bool(subscriptions), "the dashboard subscribed to model progress over its WebSocket")
        socket, subscription = subscriptions[-1]
        socket.send(json.dumps({"id": subscription, "type": "next",
                                "payload": {"data": {"modelDownloadProgress": failed}}}))  # fmt: skip
        card = page.locator('article.model[data-model="example/broken"][data-state="FAILED"]')
        await card.wait_for(timeout=10_000)
        text = await card.inner_text()
        assert text.count(error) == 1, text
        assert await card.locator(".last-error dd").inner_text() == error
        assert await card.locator(".fact-message").is_hidden()
        assert await card.locator(".fact-attempt dd").inner_text() == "3 of 3, all failed"
        assert watch.off_host() == []
        assert watch.errors == []


# Needs live_server.start_download(name) from the lead's fixture: a fresh model cache and a
# reachable (local) Hugging Face mirror, so the model really downloads during the test.
@browser_test
async def test_dashboard_bars_move_to_ready_during_a_download(browser, live_server) -> None:
    if not hasattr(live_server, "start_download"):
        pytest.fail("the live_server fixture must offer start_download(name) for this test")
    name = getattr(live_server, "download_model", BUILTIN_DEFAULT_MODEL)
    async with offline_page(browser) as (page, watch):
        await page.goto(live_server.url + "/dashboard")
        await page.locator("#connection[data-state=connected]").wait_for(timeout=20_000)
        card = page.locator(f'article.model[data-model="{name}"]')
        await card.wait_for(timeout=20_000)
        await _record_progress(page, name)

        started = live_server.start_download(name)
        if inspect.isawaitable(started):
            await started

        await page.locator(f'article.model[data-model="{name}"][data-state="READY"]').wait_for(timeout=240_000)
        history = await page.evaluate("window.__progress")
        states = [h["state"] for h in history]
        values = [h["value"] for h in history if h["value"] is not None]
        assert "DOWNLOADING" in states, history
        part_way = [h["value"] for h in history if h["state"] == "DOWNLOADING" and h["value"] is not None]
        assert any(0 < v < 100 for v in part_way), history  # seen moving part-way...
        assert values[-1] == 100, history  # ...and finished full

        bar = card.get_by_role("progressbar", name=f"Download progress of {name}")
        assert await bar.get_attribute("aria-valuenow") == "100"
        file_bars = card.locator("ul.files").get_by_role("progressbar")
        assert await file_bars.count() >= 1
        assert set(await file_bars.evaluate_all("els => els.map(e => e.getAttribute('aria-valuenow'))")) == {"100"}

        shot = artifact_path("dashboard-ready.png")
        await page.screenshot(path=str(shot), full_page=True)
        assert png_size(shot.read_bytes())[0] == 1280
        assert watch.off_host() == []
        assert watch.errors == []


def _graphql(live_server, query: str) -> dict:
    body = httpx.post(live_server.url + "/graphql", json={"query": query}, timeout=30).json()
    assert "errors" not in body, body
    return body["data"]


async def _record_connection_states(page) -> None:
    await page.evaluate(
        """() => {
        const el = document.getElementById("connection");
        window.__connectionStates = [];
        new MutationObserver(() => window.__connectionStates.push(el.dataset.state))
          .observe(el, { attributes: true, attributeFilter: ["data-state"] });
      }"""
    )


async def _record_progress(page, name: str) -> None:
    """Log every (state, aria-valuenow) the model's card goes through, however fast."""
    await page.evaluate(
        """(name) => {
        const card = [...document.querySelectorAll("article.model")].find(e => e.dataset.model === name);
        const bar = card.querySelector(":scope > [role=progressbar]");
        window.__progress = [];
        const record = () => {
          const raw = bar.getAttribute("aria-valuenow");
          const entry = { state: card.dataset.state, value: raw === null ? null : Number(raw) };
          const last = window.__progress[window.__progress.length - 1];
          if (!last || last.state !== entry.state || last.value !== entry.value) window.__progress.push(entry);
        };
        record();
        new MutationObserver(record).observe(card, { attributes: true, subtree: true });
      }""",
        name,
    )
