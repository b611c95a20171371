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
    """Whose share of the model a call uses: its own when it has one (a job), else its key, else
    its client's address."""
    if principal.fair_key:
        return principal.fair_key
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


# A request answered within this long after its body was read never watches for a hang-up (a
# task per request: measured 35-80 us of event-loop CPU): what a client leaves behind is work that
# waits long, and a quick request costs a timer only.
WATCH_AFTER_S = 0.5


async def _cancelled_on_hang_up(app: Any, scope: Any, receive: Any, send: Any) -> None:
    """Run the request; once its body is read (and WATCH_AFTER_S later), wait for the server's next
    message: `http.disconnect` before the response is complete means the client left, and the
    request's task is cancelled. (uvicorn, httpx's and Starlette's test transports send it only
    then, or once the response is done.)"""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    watch: asyncio.Task[Any] | None = None
    timer: asyncio.TimerHandle | None = None
    answered = finished = left = False

    def start_watching() -> asyncio.Task[Any]:
        nonlocal watch
        if timer is not None:
            timer.cancel()
        if watch is None:
            watch = loop.create_task(receive())
            watch.add_done_callback(on_message)
        return watch

    def on_message(message: asyncio.Task[Any]) -> None:
        nonlocal left
        if finished or message.cancelled() or message.exception() is not None:
            return
        if message.result().get("type") == "http.disconnect" and not answered:
            left = True
            task.cancel()

    async def receive_watched() -> Any:
        nonlocal timer
        if timer is not None:  # the app listens again (e.g. for a disconnect): the same message
            return await asyncio.shield(start_watching())
        message = await receive()
        if message.get("type") == "http.request" and not message.get("more_body", False):
            timer = loop.call_later(WATCH_AFTER_S, start_watching)
        return message

    async def send_watched(message: Any) -> None:
        nonlocal answered
        if message.get("type") == "http.response.body" and not message.get("more_body", False):
            answered = True
        await send(message)

    try:
        await app(scope, receive_watched, send_watched)
    except asyncio.CancelledError:
        if left and task.uncancel() == 0:
            return  # the client left: nobody to answer
        raise  # (also) the server is stopping this request
    finally:
        finished = True
        if timer is not None:
            timer.cancel()
        if watch is not None and not watch.done():
            watch.cancel()
