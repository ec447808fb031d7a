"""Which relay of this process reads which response queue.

One reader per response queue: two relays on one queue would take each other's replies. The
registry also tells code that makes replies in this process (``ReplyBatcher``, the ``put`` a relay
installs on its queue) that they can hand replies to that relay instead of through the queue.
Its own module so that those can import it without importing the relay.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from isolated_api.main.relay import Relay

_readers: dict[int, Relay] = {}
_lock = threading.Lock()


def claim(response_q: Any, relay: Relay) -> None:
    """Registers ``relay`` as the reader of ``response_q``; RuntimeError if another one is."""
    with _lock:
        if id(response_q) in _readers:
            raise RuntimeError("this response_q is already read by another running server or channel")
        _readers[id(response_q)] = relay


def release(response_q: Any, relay: Relay) -> None:
    with _lock:
        if _readers.get(id(response_q)) is relay:
            del _readers[id(response_q)]


def relay_reading(response_q: Any) -> Relay | None:
    """The running relay of this process that reads ``response_q``, if any: replies made in this
    process can then be handed to it directly (``Relay.route_local``) instead of crossing the queue."""
    relay = _readers.get(id(response_q))
    if relay is None or relay.response_q is not response_q or relay.is_closed:
        return None
    return relay
