"""The listening socket. This process binds it once and hands it to every HTTP worker: the port
is known before they start, they all accept on it, and it stays the same across restarts."""

from __future__ import annotations

import errno
import socket

from isolated_api.shared.config import ApiConfig


class PortInUseError(OSError):
    """Another socket already listens on the host and port the server should bind."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(
            f"{host}:{port} is already in use: another process listens there. Stop it, or choose another "
            "port (with_port(0) picks a free one)"
        )
        self.errno = errno.EADDRINUSE
        self.host = host
        self.port = port


class Listener:
    def __init__(self, api: ApiConfig) -> None:
        self._api = api
        self._sock: socket.socket | None = None
        self.port: int | None = None

    def socket(self) -> socket.socket:
        """The bound socket, bound now if it isn't (again after ``close()``)."""
        if self._sock is None:
            family = socket.AF_INET6 if ":" in self._api.host else socket.AF_INET
            try:
                sock = socket.create_server(
                    (self._api.host, self._api.port), family=family, backlog=self._api.uvicorn.backlog
                )
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUseError(self._api.host, self._api.port) from None
                raise
            sock.set_inheritable(True)
            self._sock = sock
            self.port = sock.getsockname()[1]
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
