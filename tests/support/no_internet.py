"""A guard for tests of third-party clients: every connection or name lookup beyond this machine
fails and is recorded, so a test can assert that a package tried nothing on the internet (CI has
none but the package registries)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class NoInternet:
    """Every connection or name lookup beyond this machine fails, and is recorded."""

    def __init__(self) -> None:
        self.attempts: list[Any] = []

    def install(self, patch: pytest.MonkeyPatch) -> None:
        connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

        def outside(address: Any) -> bool:
            return isinstance(address, tuple) and address[0] not in LOOPBACK

        def guarded_connect(sock: socket.socket, address: Any) -> None:
            if outside(address):
                self.attempts.append(("connect", address))
                raise OSError(f"the internet is blocked in this test: {address}")
            return connect(sock, address)

        def guarded_connect_ex(sock: socket.socket, address: Any) -> int:
            if outside(address):
                self.attempts.append(("connect", address))
                raise OSError(f"the internet is blocked in this test: {address}")
            return connect_ex(sock, address)

        def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            name = host.decode() if isinstance(host, bytes) else host
            if name is not None and name not in LOOPBACK:
                self.attempts.append(("getaddrinfo", name))
                raise socket.gaierror(f"the internet is blocked in this test: {name}")
            return getaddrinfo(host, *args, **kwargs)

        patch.setattr(socket.socket, "connect", guarded_connect)
        patch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
        patch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
