"""Message types the framework defines. User requests and replies are the user's own
picklable objects; these are only for what the framework itself has to say."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorReply:
    """Put this on ``response_q`` to fail request ``id``: the client gets ``status_code``
    (400-599; anything else becomes 500) with ``message`` as the JSON ``detail``."""

    id: Hashable
    message: str
    status_code: int = 500

    @property
    def http_status(self) -> int:
        code = self.status_code
        return code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599 else 500
