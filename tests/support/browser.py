"""Headless Chromium for browser tests: Debian's /usr/bin/chromium driven by Playwright, offline.

Playwright cannot download its own browsers here, so it drives the system package
(`apt-get install -y chromium`). Every page opened through `offline_page` has all requests
to hosts other than localhost aborted and recorded, so a test can prove a page needs no internet.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:  # imported lazily at run time so a missing playwright is a skip, not an error
    from playwright.async_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def require_chromium() -> None:
    """Skip (with the reason printed) when the browser or Playwright is not installed."""
    reason = None
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing; install it with: apt-get install -y chromium"
    else:
        try:
            import playwright  # noqa: F401
        except ImportError:
            reason = "playwright is not installed; install it with: pip install playwright"
    if reason:
        print(f"SKIP browser test: {reason}")
        pytest.skip(reason)


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return parts.hostname in LOCAL_HOSTS


@asynccontextmanager
async def launch_chromium() -> AsyncIterator[Browser]:
    require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class PageWatch:
    """What a page tried to do: blocked off-host requests, WebSockets opened, script errors."""

    blocked: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    websockets: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def off_host(self) -> list[str]:
        return self.blocked + [u for u in self.requests + self.websockets if not is_local(u)]


@asynccontextmanager
async def offline_page(browser: Browser, viewport: tuple[int, int] = (1280, 800)) -> AsyncIterator[tuple[Page, PageWatch]]:
    """A fresh context and page whose non-localhost traffic is aborted and recorded."""
    watch = PageWatch()
    context = await browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})

    async def guard(route) -> None:
        if is_local(route.request.url):
            await route.continue_()
        else:
            watch.blocked.append(route.request.url)
            await route.abort("blockedbyclient")

    await context.route("**/*", guard)
    page = await context.new_page()
    page.on("request", lambda request: watch.requests.append(request.url))
    page.on("websocket", lambda ws: watch.websockets.append(ws.url))
    page.on("pageerror", lambda exc: watch.errors.append(str(exc)))
    page.on("console", lambda msg: watch.errors.append(msg.text) if msg.type == "error" else None)
    try:
        yield page, watch
    finally:
        await context.close()


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; raises if the bytes are not a PNG."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return struct.unpack(">II", data[16:24])


