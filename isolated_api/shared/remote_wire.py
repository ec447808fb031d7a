"""The messages between an API host's HTTP workers and an ``EngineHost``, over ZeroMQ.

Each message is a ZeroMQ multipart message whose first part is one byte naming its kind. Requests
and replies carry the codec's bytes as they are (a reply batch is one message); everything the
framework says itself (pings, pongs, rejects, cancels) is JSON checked against a schema, so
neither side ever unpickles what the other sent on the framework's behalf. A message that breaks
these rules is dropped and counted by whoever received it: on a network a stray or hostile packet
must not take a host down.

API worker -> engine host (the host's ROUTER adds the peer's identity in front):
    PING     [b"P", {"seq": n, "interval": s}]
    REQUEST  [b"R" | b"S" (streaming) + boot id + id length + origin length + request id + origin
              + payload]: one part, so that sending it is one call into ZeroMQ (the lengths are
              two bytes each, network order; five sends of five parts showed in an HTTP
              worker's profile: docs/performance.md, "Figures behind the code")
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
import struct
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


# -- requests ----------------------------------------------------------------------------------

_REQUEST_HEAD = struct.Struct("!c16sHH")
# The origin ("POST /v1/generate") is for the engine host's log; longer ones are cut.
MAX_ORIGIN = 200


def encode_request(streaming: bool, boot: bytes, id_bytes: bytes, origin: bytes, payload: bytes) -> bytes:
    if len(boot) != BOOT_ID_SIZE:
        raise ValueError(f"a boot id of {len(boot)} bytes")
    if len(id_bytes) > 0xFFFF:
        raise ValueError(f"a request id of {len(id_bytes)} bytes (at most 65535)")
    origin = origin[:MAX_ORIGIN]
    kind = STREAM_REQUEST if streaming else REQUEST
    return b"".join((_REQUEST_HEAD.pack(kind, boot, len(id_bytes), len(origin)), id_bytes, origin, payload))


def decode_request(data: bytes) -> tuple[bool, bytes, bytes, bytes, bytes]:
    """(streaming, boot id, request id bytes, origin, payload) of one request part."""
    head = _REQUEST_HEAD.size
    if len(data) < head:
        raise WireError(f"a request of {len(data)} bytes, shorter than its header")
    kind, boot, id_size, origin_size = _REQUEST_HEAD.unpack_from(data)
    if kind not in (REQUEST, STREAM_REQUEST):
        raise WireError(f"not a request: {kind!r}")
    end_id = head + id_size
    end_origin = end_id + origin_size
    if end_origin > len(data) or origin_size > MAX_ORIGIN:
        raise WireError("a request whose lengths do not fit it")
    view = memoryview(data)
    return (
        kind == STREAM_REQUEST,
        boot,
        bytes(view[head:end_id]),
        bytes(view[end_id:end_origin]),
        bytes(view[end_origin:]),
    )


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
    # Replies the host dropped because nobody waited for them any more (a request cancelled, or
    # whose API worker vanished): with the API side's late replies, where a lost engine's
    # answers went.
    dropped_replies: int = 0
    # Whether the host's loop reads its request_q: requests waiting unread there, the oldest
    # one's age, and for how long nothing was read (None: a queue that can't count, or a host
    # from before these fields; readiness then judges by replies).
    unread: int | None = None
    unread_age: float | None = None
    read_quiet_age: float | None = None

    def facts(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "oldest_pending_age": self.oldest_pending_age,
            "last_reply_age": self.last_reply_age,
            "unanswered_age": self.unanswered_age,
            "unread": self.unread,
            "unread_age": self.unread_age,
            "read_quiet_age": self.read_quiet_age,
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
            "dropped_replies": pong.dropped_replies,
            **(
                {}
                if pong.unread is None or pong.unread_age is None or pong.read_quiet_age is None
                else {
                    "unread": pong.unread,
                    "unread_age": round(pong.unread_age, 4),
                    "read_quiet_age": round(pong.read_quiet_age, 4),
                }
            ),
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
        dropped_replies=int(_number(obj, "dropped_replies", "pong")) if "dropped_replies" in obj else 0,
        unread=int(_number(obj, "unread", "pong")) if "unread" in obj else None,
        unread_age=_number(obj, "unread_age", "pong") if "unread_age" in obj else None,
        read_quiet_age=_number(obj, "read_quiet_age", "pong") if "read_quiet_age" in obj else None,
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
