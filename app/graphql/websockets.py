"""WebSocket protocol handlers that hold clients to the protocol.

- graphql-transport-ws: a `subscribe` whose payload is not {query: string, variables: object,
  operationName: string, extensions: object} closes the socket with 4400 (Strawberry would run
  it and fail with a TypeError in the log). The connection_init timeout (4408) is Strawberry's.
- legacy graphql-ws: no connection_init within the timeout closes with 1002 (Strawberry waits
  forever); a frame that is not a JSON object with a known `type`, or a `start` with a malformed
  payload, closes with 4400 (Strawberry ignores it silently). Queries and mutations run as over
  graphql-transport-ws, under the same rules (Strawberry's legacy handler runs only subscriptions:
  anything else failed as INTERNAL, with a traceback in the log, before any rule ran).
- Both: at most `max_subscriptions_per_connection` operations at a time (Strawberry's cap, set
  from the settings by app/main.py), and at most `max_subscriptions_per_key` over all the sockets
  of one API key (OperationQuota): opening more sockets does not get around the first cap.
- Both: revoking a key ends its sockets on every replica (KeySockets): each running operation gets
  an UNAUTHENTICATED error, then the socket closes with 4401.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from loguru import logger
import starlette.websockets
from starlette.websockets import WebSocketDisconnect
from uvicorn.protocols.utils import ClientDisconnected
from strawberry.http.exceptions import NonJsonMessageReceived, NonTextMessageReceived, WebSocketDisconnected
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from graphql import GraphQLError

from app.errors import CitadelError
from app.graphql.context import Context
from app.web.auth import WS_UNAUTHENTICATED

if TYPE_CHECKING:
    from app.services.keys import KeyService

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


REVOKED = GraphQLError("this API key was revoked", extensions={"code": "UNAUTHENTICATED"})
MIN_RECHECK_SECONDS = 1.0


class KeySockets:
    """The open WebSockets of each stored API key, in this replica: revoking the key ends them.

    A revocation arrives through KeyService.forget, whether it was made on this replica or on
    another one (carried by Redis: app/services/key_revocations.py). What Redis could not carry
    (published during an outage) is caught by the re-check `watching` runs every
    `auth.key_cache_seconds`, the same bound as for a new operation on a replica that missed it."""

    def __init__(self) -> None:
        self.sockets: dict[str, set[EndsWhenRevoked]] = {}
        self._ending: set[asyncio.Task[None]] = set()

    def add(self, key_id: str, handler: EndsWhenRevoked) -> None:
        self.sockets.setdefault(key_id, set()).add(handler)

    def discard(self, key_id: str, handler: EndsWhenRevoked) -> None:
        handlers = self.sockets.get(key_id)
        if handlers is not None:
            handlers.discard(handler)
            if not handlers:
                del self.sockets[key_id]

    def revoked(self, key_id: str) -> None:
        for handler in self.sockets.pop(key_id, ()):
            task = asyncio.create_task(handler.end_revoked(), name="citadel-ws-key-revoked")
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)

    @asynccontextmanager
    async def watching(self, keys: KeyService, recheck_seconds: float) -> AsyncIterator[None]:
        keys.revocation_watchers.append(self.revoked)
        recheck = asyncio.create_task(self._recheck(keys, max(recheck_seconds, MIN_RECHECK_SECONDS)))
        try:
            yield
        finally:
            keys.revocation_watchers.remove(self.revoked)
            recheck.cancel()
            with suppress(asyncio.CancelledError):
                await recheck

    async def _recheck(self, keys: KeyService, every_seconds: float) -> None:
        while True:
            await asyncio.sleep(every_seconds)
            for key_id, handlers in list(self.sockets.items()):
                secret = next(iter(handlers)).context.ws_secret
                try:
                    principal = await keys.authenticate(secret)
                except CitadelError:  # the key cannot be checked now (PostgreSQL away): next round
                    continue
                if principal.kind == "rejected":
                    self.revoked(key_id)


class EndsWhenRevoked:
    """A handler whose socket KeySockets ends when its key is revoked; registered once
    connection_init accepted a stored key, unregistered when the socket ends."""

    key_id: str | None = None

    async def handle_connection_init(self, message: Any) -> None:
        await super().handle_connection_init(message)  # type: ignore[misc]
        principal = self.context.principal  # type: ignore[attr-defined]
        if self.connection_acknowledged and principal.kind == "key" and principal.key_id:  # type: ignore[attr-defined]
            self.key_id = principal.key_id
            self.view.key_sockets.add(self.key_id, self)  # type: ignore[attr-defined]

    def leave_key_sockets(self) -> None:
        if self.key_id is not None:
            self.view.key_sockets.discard(self.key_id, self)  # type: ignore[attr-defined]

    async def end_revoked(self) -> None:
        try:
            await self.end_operations_revoked()
            await self.websocket.close(code=WS_UNAUTHENTICATED, reason="API key revoked")  # type: ignore[attr-defined]
        except Exception as error:
            if not client_gone(error):
                logger.opt(exception=error).warning("ending the WebSocket of a revoked key failed")

    @abstractmethod
    async def end_operations_revoked(self) -> None:
        """Send each running operation its UNAUTHENTICATED error (each protocol's handler below
        says how)."""


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


class TransportWSHandler(EndsWhenRevoked, QuietOnDisconnect, BaseGraphQLTransportWSHandler):
    async def shutdown(self) -> None:
        self.leave_key_sockets()
        await super().shutdown()

    async def end_operations_revoked(self) -> None:
        for operation in list(self.operations.values()):
            # Marks the operation completed: nothing more is sent for it.
            await operation.send_operation_message({"id": operation.id, "type": "error", "payload": [REVOKED.formatted]})
            if operation.task is not None:
                operation.task.cancel()

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


class EveryOperationType:
    """The schema as the legacy handler sees it: its `subscribe` runs any operation, as
    graphql-transport-ws does (`stream`: one result for a query or mutation, then complete)."""

    def __init__(self, schema: Any) -> None:
        self.schema = schema

    async def subscribe(self, **kwargs: Any) -> Any:
        return await self.schema.stream(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.schema, name)


class LegacyWSHandler(EndsWhenRevoked, QuietOnDisconnect, BaseGraphQLWSHandler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.schema = EveryOperationType(self.schema)  # type: ignore[assignment]

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
            self.leave_key_sockets()
            init_timeout.cancel()
            with suppress(asyncio.CancelledError):
                await init_timeout
            if self.keep_alive_task:
                self.keep_alive_task.cancel()
                with suppress(BaseException):
                    await self.keep_alive_task
            await self.cleanup()

    async def end_operations_revoked(self) -> None:
        # Closing the socket then stops the operations (Strawberry's cleanup).
        for operation_id in list(self.tasks):
            await self.send_message({"type": "error", "id": operation_id, "payload": REVOKED.formatted})

    async def handle_async_results(self, *args: Any) -> None:
        # A result sent as the client leaves fails in the operation's task, which nobody awaits
        # any more ("Task exception was never retrieved" in the log): the client's doing.
        try:
            await super().handle_async_results(*args)
        except Exception as error:
            if not client_gone(error):
                raise
            logger.debug("graphql-ws client left before its result was sent")

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
