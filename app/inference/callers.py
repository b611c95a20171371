"""Who is asking the model for work, and whether they are still there to take the answer.

- `fair_key_of(principal)`: whose share of the model a call uses (app/inference/fair_queue.py):
  its API key, else the address of its client (keys not required), else the server itself.
- `CallerEdge`, the outermost ASGI middleware (app/main.py): the client's address for the
  request's fair key, and a client that hangs up before its answer has its request cancelled, so
  the texts it queued are dropped instead of computed for nobody (a WebSocket's operations are
  cancelled when it closes, app/graphql/websockets.py).
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from app.domain.access import Principal

# The fair key of the server's own work (the reconciler, tests of one service).
INTERNAL_FAIR_KEY = "internal"

# The client's address for the request being served; set by CallerEdge.
CLIENT_ADDRESS: ContextVar[str | None] = ContextVar("citadel_client_address", default=None)


@dataclass(frozen=True)
class Share:
    """Whose share of the model a call uses (fair_key), and whether a full queue makes it wait
    for room (bulk work whose texts are already stored) or answers OVERLOADED at once."""

    fair_key: str = INTERNAL_FAIR_KEY
    waits: bool = False


def fair_key_of(principal: Principal) -> str:
    """Whose share of the model a call uses: its key, else its client's address."""
    if principal.key_id:
        return f"key:{principal.key_id}"
    if principal.kind == "env":
        return "key:admin-env"
    address = CLIENT_ADDRESS.get()
    return f"address:{address}" if address else INTERNAL_FAIR_KEY


class CallerEdge:
    """ASGI middleware: CLIENT_ADDRESS while a request (or WebSocket) runs; an HTTP request whose
    client disconnects before the answer is cancelled."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        client = scope.get("client")
        token = CLIENT_ADDRESS.set(client[0] if client else None)
        try:
            if scope["type"] == "http":
                await _cancelled_on_hang_up(self.app, scope, receive, send)
            else:
                await self.app(scope, receive, send)
        finally:
            CLIENT_ADDRESS.reset(token)


async def _cancelled_on_hang_up(app: Any, scope: Any, receive: Any, send: Any) -> None:
    """Run the request in a task of its own; once its body is read, wait for the server's next
    message: `http.disconnect` before the response is complete means the client left. (uvicorn,
    httpx's and Starlette's test transports all send it only then, or once the response is done.)"""
    loop = asyncio.get_running_loop()
    hang_up: asyncio.Task[Any] | None = None
    answered = False

    def on_message(watch: asyncio.Task[Any]) -> None:
        if watch.cancelled() or watch.exception() is not None:
            return
        if watch.result().get("type") == "http.disconnect" and not answered:
            work.cancel()

    async def receive_watched() -> Any:
        nonlocal hang_up
        if hang_up is not None:  # the app listens again (e.g. for a disconnect): same message
            return await asyncio.shield(hang_up)
        message = await receive()
        if message.get("type") == "http.request" and not message.get("more_body", False):
            hang_up = loop.create_task(receive())
            hang_up.add_done_callback(on_message)
        return message

    async def send_watched(message: Any) -> None:
        nonlocal answered
        if message.get("type") == "http.response.body" and not message.get("more_body", False):
            answered = True
        await send(message)

    work = loop.create_task(app(scope, receive_watched, send_watched))
    try:
        await work
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the server is stopping this request itself
        # The client left: nobody to answer.
    finally:
        if hang_up is not None and not hang_up.done():
            hang_up.cancel()
