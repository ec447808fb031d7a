"""The messages between an API host's HTTP workers and an ``EngineHost``, over ZeroMQ.

Each message is a ZeroMQ multipart message whose first part is one byte naming its kind. Requests
and replies carry the codec's bytes as they are (a reply batch is one message); everything the
framework says itself (pings, pongs, rejects, cancels) is JSON checked against a schema, so
neither side ever unpickles what the other sent on the framework's behalf. A message that breaks
these rules is dropped and counted by whoever received it: on a network a stray or hostile packet
must not take a host down.

API worker -> engine host (the host's ROUTER adds the peer's identity in front):
    PING     [b"P", {"seq": n, "interval": s}]
    REQUEST  [b"R" | b"S" (streaming), boot id, request id, origin, payload]
    CANCEL   [b"C", control cancel frame]
    BYE      [b"B"]                          the worker closes its link
Engine host -> API worker:
    PONG     [b"O", {"seq", "boot", "pending", "capacity", ...}]
    REPLY    [b"Y", payload]                 one reply
    REPLIES  [b"L", payload]                 a list of replies, in order
    REJECT   [b"J", request id, {"why", "message", "status", "retry_after"}]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PING = b"P"
REQUEST = b"R"
STREAM_REQUEST = b"S"
CANCEL = b"C"
BYE = b"B"
PONG = b"O"
REPLY = b"Y"
REPLIES = b"L"
REJECT = b"J"

BOOT_ID_SIZE = 16
# Why a request was refused; those it never ran for may be sent to another engine.
RETRYABLE = frozenset({"full", "queue_full", "stale", "closed"})
_WHYS = RETRYABLE | {"duplicate", "bad"}
# The largest message an engine host accepts from a peer (a request with its body): ZeroMQ drops
# the connection of a peer that sends more, before buffering it.
MAX_MESSAGE = 64 << 20
_MAX_CONTROL = 4096


class WireError(ValueError):
    """A message that breaks the rules above."""


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def _load_object(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > _MAX_CONTROL:
        raise WireError(f"a {what} of {len(data)} bytes")
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"a {what} that is not JSON: {exc}") from None
    if type(obj) is not dict:
        raise WireError(f"a {what} that is not an object")
    return obj


def _number(obj: dict[str, Any], key: str, what: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise WireError(f"a {what} whose {key!r} is not a number >= 0")
    return float(value)


# -- ping / pong -------------------------------------------------------------------------------


def encode_ping(seq: int, interval: float) -> bytes:
    return _dump({"seq": seq, "interval": interval})


def decode_ping(data: bytes) -> tuple[int, float]:
    obj = _load_object(data, "ping")
    return int(_number(obj, "seq", "ping")), _number(obj, "interval", "ping")


@dataclass(frozen=True, slots=True)
class Pong:
    """An engine host's answer to a ping: who it is now (``boot`` changes with each start) and
    how loaded and how alive its main loop is (the relay's facts, as readiness reads them)."""

    seq: int
    boot: str
    pending: int
    # The host's max_pending (0: unbounded).
    capacity: int
    oldest_pending_age: float
    last_reply_age: float
    unanswered_age: float

    def facts(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "oldest_pending_age": self.oldest_pending_age,
            "last_reply_age": self.last_reply_age,
            "unanswered_age": self.unanswered_age,
        }


def encode_pong(pong: Pong) -> bytes:
    return _dump(
        {
            "seq": pong.seq,
            "boot": pong.boot,
            "pending": pong.pending,
            "capacity": pong.capacity,
            "oldest_pending_age": round(pong.oldest_pending_age, 4),
            "last_reply_age": round(pong.last_reply_age, 4),
            "unanswered_age": round(pong.unanswered_age, 4),
        }
    )


def decode_pong(data: bytes) -> Pong:
    obj = _load_object(data, "pong")
    boot = obj.get("boot")
    if type(boot) is not str or len(boot) != 2 * BOOT_ID_SIZE:
        raise WireError("a pong without a boot id")
    return Pong(
        seq=int(_number(obj, "seq", "pong")),
        boot=boot,
        pending=int(_number(obj, "pending", "pong")),
        capacity=int(_number(obj, "capacity", "pong")),
        oldest_pending_age=_number(obj, "oldest_pending_age", "pong"),
        last_reply_age=_number(obj, "last_reply_age", "pong"),
        unanswered_age=_number(obj, "unanswered_age", "pong"),
    )


# -- reject ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reject:
    why: str
    message: str
    status: int
    retry_after: int

    @property
    def retryable(self) -> bool:
        """The engine never ran the request: another engine may."""
        return self.why in RETRYABLE


def encode_reject(reject: Reject) -> bytes:
    return _dump(
        {"why": reject.why, "message": reject.message[:500], "status": reject.status, "retry_after": reject.retry_after}
    )


def decode_reject(data: bytes) -> Reject:
    obj = _load_object(data, "reject")
    why, message = obj.get("why"), obj.get("message")
    if why not in _WHYS or type(message) is not str:
        raise WireError("a reject without a known reason or a message")
    status = int(_number(obj, "status", "reject"))
    if not 400 <= status <= 599:
        raise WireError("a reject whose status is not 4xx or 5xx")
    return Reject(why, message, status, int(_number(obj, "retry_after", "reject")))
