"""The framework's own frames from an HTTP worker to the main process (ready, probe, cancel,
metrics report), in one fixed format whatever the server's codec: JSON, checked against a schema
on decode.

Why not the codec: with the default ``PickleCodec`` the relay would unpickle what a worker sent
with no user code involved, so a compromised worker would run code in the main process through a
health probe. JSON decoding builds dicts, lists, strings and numbers; the checks below refuse
anything else, and every size is capped (``ControlLimits``). A frame that fails them raises
``ProtocolError``: the endpoint treats its worker as dead.

Request ids inside control frames travel as the codec's id encoding (``encode_id``): text or a
number for the usual ``str``/``int`` ids (the only ids ``MsgspecCodec`` allows). Only ids of other
types under ``PickleCodec`` are pickles, and with that codec the requests themselves are too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from isolated_api.shared.framing import ProtocolError
from isolated_api.shared.metrics_report import HttpKey

_PROBE_WHATS = ("facts", "metrics")


@dataclass(frozen=True)
class ControlLimits:
    """What one worker may send in one control frame."""

    # Distinct (method, route, status) keys in one metrics report; a worker counts per route
    # template, so a real app sends a few dozen.
    max_metric_labels: int = 1000
    max_label_length: int = 256
    # Sizes of the frames themselves (bytes).
    max_control_frame: int = 1 << 20
    max_small_frame: int = 4096


LIMITS = ControlLimits()


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def _load(data: bytes, limit: int) -> Any:
    if len(data) > limit:
        raise ProtocolError(f"a control frame of {len(data)} bytes, over the cap of {limit}")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"a control frame that is not JSON: {exc}") from None


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise ProtocolError(f"{what} must be an integer, got {type(value).__name__}")
    return value


def _text(value: Any, what: str, limit: int) -> str:
    if type(value) is not str or len(value) > limit:
        raise ProtocolError(f"{what} must be a string of at most {limit} characters")
    return value


# -- ready -------------------------------------------------------------------------------------


def encode_ready(pid: int, port: int) -> bytes:
    return _dump({"pid": pid, "port": port})


def decode_ready(data: bytes) -> dict[str, int]:
    obj = _load(data, LIMITS.max_small_frame)
    if type(obj) is not dict:
        raise ProtocolError("a ready frame must be an object")
    return {"pid": _int(obj.get("pid"), "ready pid"), "port": _int(obj.get("port"), "ready port")}


# -- probe -------------------------------------------------------------------------------------


def encode_probe(token: int, what: str) -> bytes:
    return _dump([token, what])


def decode_probe(data: bytes) -> tuple[int, str]:
    obj = _load(data, LIMITS.max_small_frame)
    if type(obj) is not list or len(obj) != 2 or obj[1] not in _PROBE_WHATS:
        raise ProtocolError(f"a probe frame must be [token, one of {_PROBE_WHATS}]")
    return _int(obj[0], "probe token"), obj[1]


# -- cancel ------------------------------------------------------------------------------------


def encode_cancel(request_id: Hashable, reason: str, encode_id: Callable[[Hashable], bytes]) -> bytes:
    # The reason first (short JSON text), a newline, then the id as the codec encodes ids.
    return _dump(reason) + b"\n" + encode_id(request_id)


def decode_cancel(data: bytes, decode_id: Callable[[bytes], Hashable]) -> tuple[Hashable, str]:
    if len(data) > LIMITS.max_small_frame:
        raise ProtocolError(f"a cancel frame of {len(data)} bytes, over the cap of {LIMITS.max_small_frame}")
    reason_part, sep, id_part = data.partition(b"\n")
    if not sep:
        raise ProtocolError("a cancel frame without its id")
    reason = _text(_load(reason_part, LIMITS.max_small_frame), "cancel reason", 64)
    try:
        return decode_id(id_part), reason
    except Exception as exc:
        raise ProtocolError(f"a cancel frame whose id does not decode: {exc!r}") from None


# -- metrics report ----------------------------------------------------------------------------


def encode_metrics(report: dict[str, Any]) -> bytes:
    http = [[method, route, status, count] for (method, route, status), count in report["http"]]
    return _dump({"http": http, "rejected": report["rejected"], "dropped": report["dropped"]})


def decode_metrics(data: bytes) -> dict[str, Any]:
    """``{"http": [((method, route, status), count), ...], "rejected": n, "dropped": n}``."""
    limits = LIMITS
    obj = _load(data, limits.max_control_frame)
    if type(obj) is not dict or type(obj.get("http")) is not list:
        raise ProtocolError("a metrics report must be an object with an 'http' list")
    rows = obj["http"]
    if len(rows) > limits.max_metric_labels:
        raise ProtocolError(f"a metrics report with {len(rows)} label sets, over the cap of {limits.max_metric_labels}")
    http: list[tuple[HttpKey, int]] = []
    for row in rows:
        if type(row) is not list or len(row) != 4:
            raise ProtocolError("a metrics row must be [method, route, status, count]")
        method = _text(row[0], "metrics method", 16)
        route = _text(row[1], "metrics route", limits.max_label_length)
        status, count = _int(row[2], "metrics status"), _int(row[3], "metrics count")
        if not 100 <= status <= 599 or count < 0:
            raise ProtocolError("a metrics row with a status outside 100-599 or a negative count")
        http.append(((method, route, status), count))
    rejected, dropped = _int(obj.get("rejected"), "rejected count"), _int(obj.get("dropped"), "dropped count")
    if rejected < 0 or dropped < 0:
        raise ProtocolError("negative counts in a metrics report")
    return {"http": http, "rejected": rejected, "dropped": dropped}
