"""WebSocket protocol handlers that hold clients to the protocol.

- graphql-transport-ws: a `subscribe` whose payload is not {query: string, variables: object,
  operationName: string, extensions: object} closes the socket with 4400 (Strawberry would run
  it and fail with a TypeError in the log). The connection_init timeout (4408) is Strawberry's.
- legacy graphql-ws: no connection_init within the timeout closes with 1002 (Strawberry waits
  forever); a frame that is not a JSON object with a known `type`, or a `start` with a malformed
  payload, closes with 4400 (Strawberry ignores it silently).
- Both: at most `max_subscriptions_per_connection` operations at a time (Strawberry's cap, set
  from the settings by app/main.py), and at most `max_subscriptions_per_key` over all the sockets
  of one API key (OperationQuota): opening more sockets does not get around the first cap.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from collections import Counter
from typing import Any, Awaitable, Callable

from loguru import logger
import starlette.websockets
from starlette.websockets import WebSocketDisconnect
from uvicorn.protocols.utils import ClientDisconnected
from strawberry.http.exceptions import NonJsonMessageReceived, NonTextMessageReceived, WebSocketDisconnected
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from graphql import GraphQLError

from app.graphql.context import Context

MALFORMED = 4400
LEGACY_INIT_TIMEOUT = 1002
LEGACY_MESSAGE_TYPES = {"connection_init", "connection_terminate", "start", "stop"}


# A result sent after the client went away: the client's doing, not a server error to log.
# Starlette >= 1.x raises its own WebSocketDisconnected (a RuntimeError) on a send after close.
_SEND_AFTER_CLOSE = getattr(starlette.websockets, "WebSocketDisconnected", WebSocketDisconnect)
CLIENT_GONE: tuple[type[BaseException], ...] = (WebSocketDisconnected, WebSocketDisconnect, ClientDisconnected, _SEND_AFTER_CLOSE)


def client_gone(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, CLIENT_GONE):
            return True
        error = error.__cause__ or error.__context__
    return False


class QuietOnDisconnect:
    """Worker tasks whose client left mid-send end quietly; anything else is logged as before."""

    async def handle_task_exception(self, error: Exception) -> None:
        if client_gone(error):
            logger.debug("WebSocket client left before its result was sent")
            return
        await super().handle_task_exception(error)  # type: ignore[misc]


class OperationQuota:
    """Operations running over WebSockets per caller, in this replica.

    The caller is the API key, or the client address for callers without a key (where keys are not
    required). A slot is taken when an operation starts and given back when its task ends, however
    it ends (completed, stopped, failed, socket closed)."""

    def __init__(self, per_caller: int) -> None:
        self.per_caller = per_caller
        self.running: Counter[str] = Counter()

    def try_take(self, caller: str) -> bool:
        if self.running[caller] >= self.per_caller:
            return False
        self.running[caller] += 1
        return True

    def give_back(self, caller: str) -> None:
        self.running[caller] -= 1
        if self.running[caller] <= 0:
            del self.running[caller]

    async def start_within(
        self, caller: str, start: Callable[[], Awaitable[None]], started: Callable[[], asyncio.Task[Any] | None]
    ) -> bool:
        """Run `start` (Strawberry's handler, which registers the operation's task) holding one of
        the caller's slots until that task ends; False, and nothing started, when none is left."""
        if not self.try_take(caller):
            return False
        try:
            await start()
        finally:
            task = started()
            if task is None:
                self.give_back(caller)
            else:
                task.add_done_callback(lambda _: self.give_back(caller))
        return True


def caller_of(context: Context) -> str:
    principal = context.principal
    if principal.key_id:
        return f"key:{principal.key_id}"
    if principal.kind == "env":
        return "key:admin-env"
    client = context.request.client
    return f"address:{client.host if client else 'unknown'}"


QUOTA_REACHED = GraphQLError(
    "Subscription limit reached for this API key: close one of its running operations first",
    extensions={"code": "RATE_LIMITED"},
)


def operation_problem(payload: Any) -> str | None:
    """Why a subscribe/start payload is malformed, or None."""
    if not isinstance(payload, dict):
        return "payload must be an object"
    if not isinstance(payload.get("query"), str):
        return "payload.query must be a string"
    for key, kind, label in (
        ("variables", dict, "an object"),
        ("extensions", dict, "an object"),
        ("operationName", str, "a string"),
    ):
        if payload.get(key) is not None and not isinstance(payload[key], kind):
            return f"payload.{key} must be {label} or null"
    return None


class TransportWSHandler(QuietOnDisconnect, BaseGraphQLTransportWSHandler):
    async def handle_message(self, message: Any) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            await self.handle_invalid_message("a message must be an object with a string `type`")
            return
        if message["type"] in ("subscribe", "complete") and not isinstance(message.get("id"), str):
            await self.handle_invalid_message("`id` must be a string")
            return
        if message["type"] == "subscribe" and (problem := operation_problem(message.get("payload"))):
            await self.handle_invalid_message(problem)
            return
        await super().handle_message(message)

    async def handle_subscribe(self, message: Any) -> None:
        # Strawberry's own checks (acknowledged, duplicate id, per-connection cap) come first.
        opens = (
            self.connection_acknowledged
            and message["id"] not in self.operations
            and len(self.operations) < (self.max_subscriptions_per_connection or float("inf"))
        )
        if not opens:
            await super().handle_subscribe(message)
            return

        def started() -> asyncio.Task[Any] | None:
            operation = self.operations.get(message["id"])
            return operation.task if operation is not None else None

        quota: OperationQuota = self.view.operation_quota
        start = lambda: super(TransportWSHandler, self).handle_subscribe(message)  # noqa: E731
        if not await quota.start_within(caller_of(self.context), start, started):
            await self.send_message({"id": message["id"], "type": "error", "payload": [QUOTA_REACHED.formatted]})


class LegacyWSHandler(QuietOnDisconnect, BaseGraphQLWSHandler):
    async def handle(self) -> None:
        init_timeout = asyncio.create_task(self._close_without_init())
        try:
            try:
                async for message in self.websocket.iter_json():
                    if not await self._well_formed(message):
                        return
                    await self.handle_message(message)  # type: ignore[arg-type]
            except NonTextMessageReceived:
                await self.websocket.close(code=1002, reason="WebSocket message type must be text")
            except NonJsonMessageReceived:
                await self.websocket.close(code=MALFORMED, reason="WebSocket message must be a JSON object")
        except WebSocketDisconnected:
            pass
        finally:
            init_timeout.cancel()
            with suppress(asyncio.CancelledError):
                await init_timeout
            if self.keep_alive_task:
                self.keep_alive_task.cancel()
                with suppress(BaseException):
                    await self.keep_alive_task
            await self.cleanup()

    async def handle_start(self, message: Any) -> None:
        if not self.connection_acknowledged:
            await super().handle_start(message)
            return
        if message["id"] in self.tasks:  # Strawberry replaces an operation of the same id
            await self.cleanup_operation(message["id"])
        if len(self.tasks) >= (self.max_subscriptions_per_connection or float("inf")):
            await super().handle_start(message)  # Strawberry's per-connection refusal
            return
        quota: OperationQuota = self.view.operation_quota
        start = lambda: super(LegacyWSHandler, self).handle_start(message)  # noqa: E731
        if not await quota.start_within(caller_of(self.context), start, lambda: self.tasks.get(message["id"])):
            await self.send_message({"type": "error", "id": message["id"], "payload": QUOTA_REACHED.formatted})

    async def _close_without_init(self) -> None:
        # The same setting as graphql-transport-ws's (the view's connection_init_wait_timeout).
        await asyncio.sleep(self.view.connection_init_wait_timeout.total_seconds())
        if not self.connection_acknowledged:
            with suppress(Exception):
                await self.websocket.close(code=LEGACY_INIT_TIMEOUT, reason="Connection initialisation timeout")

    async def _well_formed(self, message: Any) -> bool:
        problem = None
        if not isinstance(message, dict) or message.get("type") not in LEGACY_MESSAGE_TYPES:
            problem = "a message must be an object with a known `type`"
        elif message["type"] in ("start", "stop") and not isinstance(message.get("id"), str):
            problem = "`id` must be a string"
        elif message["type"] == "start":
            problem = operation_problem(message.get("payload"))
        if problem is None:
            return True
        logger.debug("graphql-ws: closing a socket after a malformed message: {}", problem)
        await self.websocket.close(code=MALFORMED, reason=problem)
        return False
