"""Errors a handler raises to choose the HTTP status its client sees."""

from __future__ import annotations


class EngineError(Exception):
    """Raised by a handler: the client gets ``status_code`` (400-599) with ``message`` as the detail."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
