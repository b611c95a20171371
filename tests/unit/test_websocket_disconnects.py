"""Which send failures count as "the client left" (logged quietly) rather than server errors."""

from __future__ import annotations

from typing import Any

from starlette.websockets import WebSocket, WebSocketState
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.types import ExecutionResult

from app.graphql.websockets import LegacyWSHandler, client_gone


async def closed_socket_send_error() -> BaseException:
    """The error Starlette itself raises on a send after the close message went out."""

    async def receive():  # never called
        raise AssertionError

    async def send(message):
        return None

    ws = WebSocket({"type": "websocket", "path": "/", "headers": []}, receive, send)
    ws.application_state = WebSocketState.DISCONNECTED
    try:
        await ws.send_text("late result")
    except BaseException as error:  # noqa: BLE001 - whatever this Starlette version raises
        return error
    raise AssertionError("Starlette accepted a send on a closed socket")


async def test_a_send_after_close_is_the_client_leaving():
    error = await closed_socket_send_error()
    assert client_gone(error), type(error)


async def test_a_send_after_close_wrapped_in_another_error_is_still_the_client_leaving():
    inner = await closed_socket_send_error()
    try:
        try:
            raise inner
        except BaseException as cause:
            raise ValueError("while sending next") from cause
    except ValueError as outer:
        assert client_gone(outer)


def test_other_errors_are_not_the_client_leaving():
    assert not client_gone(RuntimeError("boom"))
    assert not client_gone(None)



class _GoneSocket:
    """A WebSocket whose client has left: every send fails as Strawberry's adapter fails it."""

    async def send_json(self, message: Any) -> None:
        raise WebSocketDisconnected()


class _OneResult:
    async def stream(self, **kwargs: Any) -> Any:
        async def results() -> Any:
            yield ExecutionResult(data={"health": {"status": "ok"}}, errors=None)

        return results()


async def test_a_legacy_result_sent_after_the_client_left_ends_its_operation_quietly():
    handler = LegacyWSHandler(None, _GoneSocket(), None, None, _OneResult(), False, None)  # type: ignore[arg-type]
    # Raised here, the error would end the operation's task unretrieved (a traceback in the log).
    await handler.handle_async_results("1", "{ health { status } }", None, None)
    assert handler.tasks == {} and handler.subscriptions == {}
