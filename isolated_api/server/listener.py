"""The listening socket. This process binds it once and hands it to every HTTP worker: the port
is known before they start, they all accept on it, and it stays the same across restarts."""

from __future__ import annotations

import socket

from isolated_api.shared.config import ApiConfig


class Listener:
    def __init__(self, api: ApiConfig) -> None:
        self._api = api
        self._sock: socket.socket | None = None
        self.port: int | None = None

    def socket(self) -> socket.socket:
        """The bound socket, bound now if it isn't (again after ``close()``)."""
        if self._sock is None:
            family = socket.AF_INET6 if ":" in self._api.host else socket.AF_INET
            sock = socket.create_server(
                (self._api.host, self._api.port), family=family, backlog=self._api.uvicorn.backlog
            )
            sock.set_inheritable(True)
            self._sock = sock
            self.port = sock.getsockname()[1]
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
