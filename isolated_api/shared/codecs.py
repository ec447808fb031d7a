"""Codecs: how requests and replies are turned into bytes between processes.

``PickleCodec`` (the default) carries any picklable object, and the main process's queues carry
your objects as they are. ``MsgspecCodec`` (MessagePack, optional extra ``isolated_api[msgspec]``)
carries only the ``msgspec.Struct`` types you list, is faster on typical messages, and is safe to
decode from an untrusted peer: decoding builds those types and nothing else, where unpickling can
run code. With it, ``request_q`` and ``response_q`` carry ``bytes``: the main process decodes
requests and encodes replies with the same codec (the ``Engine`` companion does it for you). The
framework's own frames from a worker to the relay (ready, probes, cancellations, metrics) are JSON
checked against a schema whatever the codec (``shared/control.py``), so the relay never unpickles
what a worker sent on its own behalf; see docs/security.md for which codec to pick when the HTTP
side faces the internet.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Hashable
from typing import Any, Protocol, Union

from isolated_api.shared.config_checks import ConfigError
from isolated_api.shared.errors import IPCError
from isolated_api.shared.framing import Body, dumps, dumps_parts
from isolated_api.shared.heartbeat import Heartbeat
from isolated_api.shared.messages import CancelRequest, ErrorReply

_STR_ID = b"s"
_INT_ID = b"i"


class CodecError(IPCError):
    """A message could not be encoded or decoded by the server's codec."""

    status_code = 500


class Codec(Protocol):
    name: str
    # True when the user's queues carry this codec's bytes rather than objects.
    binary: bool

    def encode(self, obj: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...

    def encode_control(self, obj: Any) -> bytes: ...

    def decode_control(self, data: bytes) -> Any: ...

    def encode_id(self, request_id: Hashable) -> bytes: ...

    def decode_id(self, data: bytes) -> Hashable: ...

    def find_id(self, data: bytes) -> Hashable | None:
        """The ``id`` of a message that did not decode, if it can still be read (so that one
        request can fail with the reason instead of timing out)."""


def view_decoder(codec: Codec) -> Callable[[bytes | bytearray | memoryview], Any]:
    """``codec.decode`` for a message handed on as a view of the bytes read (no copy). The
    library's codecs take views as they are (pickle and msgspec read any buffer); a codec of the
    user's own was written for ``bytes`` and gets them."""
    if type(codec) is PickleCodec or type(codec) is MsgspecCodec:
        return codec.decode

    def decode(data: bytes | bytearray | memoryview) -> Any:
        return codec.decode(data if type(data) is bytes else bytes(data))

    return decode


def encode_parts(codec: Codec, obj: Any) -> list[Body]:
    """``codec.encode(obj)`` as pieces to write one after another: with pickle, a large buffer in
    ``obj`` is a piece of its own, by reference (``framing.dumps_parts``); another codec's
    encoding is one piece."""
    if type(codec) is not PickleCodec:
        return [codec.encode(obj)]
    try:
        return dumps_parts(obj)
    except Exception as exc:
        raise CodecError(f"{type(obj).__name__} could not be pickled: {exc}") from exc


class PickleCodec:
    """The default: ``multiprocessing``'s pickler, so anything a ``multiprocessing.Queue`` can
    carry crosses."""

    name = "pickle"
    binary = False

    def encode(self, obj: Any) -> bytes:
        try:
            return dumps(obj)
        except Exception as exc:
            raise CodecError(f"{type(obj).__name__} could not be pickled: {exc}") from exc

    def decode(self, data: bytes | bytearray | memoryview) -> Any:
        try:
            return pickle.loads(data)
        except Exception as exc:
            raise CodecError(f"a message could not be unpickled: {exc!r}") from exc

    encode_control = encode
    decode_control = decode

    # Ids travel beside every request and reply. The usual ones (str, int) are written as their
    # text after a tag byte, several times cheaper than a pickle each way; a pickle starts with
    # 0x80, so it can never be mistaken for a tag.
    def encode_id(self, request_id: Hashable) -> bytes:
        if type(request_id) is str:
            return _STR_ID + request_id.encode("utf-8", "surrogatepass")
        if type(request_id) is int:
            return _INT_ID + b"%d" % request_id
        return self.encode(request_id)

    def decode_id(self, data: bytes) -> Hashable:
        tag = data[:1]
        if tag == _STR_ID:
            return data[1:].decode("utf-8", "surrogatepass")
        if tag == _INT_ID:
            return int(data[1:])
        result: Hashable = self.decode(data)
        return result

    def find_id(self, data: bytes) -> Hashable | None:
        return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PickleCodec)

    def __hash__(self) -> int:
        return hash(PickleCodec)


class MsgspecCodec:
    """MessagePack via msgspec, for the ``msgspec.Struct`` types given (each declared with
    ``tag=True`` so a message says which type it is). Request ids must be ``str`` or ``int``."""

    name = "msgspec"
    binary = True

    def __init__(self, *types: type) -> None:
        try:
            import msgspec
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigError("MsgspecCodec needs msgspec: pip install 'isolated_api[msgspec]'") from exc
        if not types:
            raise ConfigError("MsgspecCodec needs the msgspec.Struct types of your requests and replies")
        for cls in types:
            if not (isinstance(cls, type) and issubclass(cls, msgspec.Struct)):
                raise ConfigError(f"MsgspecCodec carries msgspec.Struct types only; {cls!r} is not one")
            if cls.__struct_config__.tag is None:
                name = cls.__name__
                raise ConfigError(f"{name} must be declared with tag=True: class {name}(Struct, tag=True)")
        self.types = types
        self._setup()

    def _setup(self) -> None:
        import msgspec

        class _ErrorReplyWire(msgspec.Struct, tag="isolated_api.ErrorReply"):
            id: str | int
            message: str
            status_code: int = 500

        class _CancelWire(msgspec.Struct, tag="isolated_api.CancelRequest"):
            id: str | int
            reason: str

        class _HeartbeatWire(msgspec.Struct, tag="isolated_api.Heartbeat"):
            pass

        self._error_wire = _ErrorReplyWire
        self._cancel_wire = _CancelWire
        self._heartbeat_wire = _HeartbeatWire
        members = (*self.types, _ErrorReplyWire, _CancelWire, _HeartbeatWire)
        self._encoder = msgspec.msgpack.Encoder()
        # A tagged union: the decoder builds exactly these types, nothing else; or a list of
        # them (several replies in one message, as ReplyBatcher sends).
        one = Union.__getitem__(members)
        self._decoder = msgspec.msgpack.Decoder(Union.__getitem__((*members, list[one])))  # type: ignore[valid-type]
        self._plain = msgspec.msgpack.Decoder()
        self._errors = (msgspec.EncodeError, msgspec.DecodeError, msgspec.ValidationError, TypeError, ValueError)

    def encode(self, obj: Any) -> bytes:
        obj = [self._to_wire(item) for item in obj] if type(obj) is list else self._to_wire(obj)
        try:
            return self._encoder.encode(obj)
        except self._errors as exc:
            raise CodecError(f"{type(obj).__name__} could not be encoded as MessagePack: {exc}") from exc

    def decode(self, data: bytes | bytearray | memoryview) -> Any:
        try:
            obj = self._decoder.decode(data)
        except self._errors as exc:
            raise CodecError(f"a message could not be decoded: {exc}") from exc
        if type(obj) is list:
            return [self._from_wire(item) for item in obj]
        return self._from_wire(obj)

    def _to_wire(self, obj: Any) -> Any:
        if type(obj) is ErrorReply:
            return self._error_wire(_wire_id(obj.id), obj.message, obj.status_code)
        if type(obj) is CancelRequest:
            return self._cancel_wire(_wire_id(obj.id), obj.reason)
        if type(obj) is Heartbeat:
            return self._heartbeat_wire()
        return obj

    def _from_wire(self, obj: Any) -> Any:
        if type(obj) is self._error_wire:
            return ErrorReply(obj.id, obj.message, obj.status_code)
        if type(obj) is self._cancel_wire:
            return CancelRequest(obj.id, obj.reason)
        if type(obj) is self._heartbeat_wire:
            return Heartbeat()
        return obj

    def encode_control(self, obj: Any) -> bytes:
        try:
            return self._encoder.encode(obj)
        except self._errors as exc:
            raise CodecError(f"could not be encoded as MessagePack: {exc}") from exc

    def decode_control(self, data: bytes) -> Any:
        return _tuples(self._plain.decode(data))

    def encode_id(self, request_id: Hashable) -> bytes:
        return self.encode_control(_wire_id(request_id))

    def decode_id(self, data: bytes) -> Hashable:
        result: Hashable = self._plain.decode(data)
        return result

    def find_id(self, data: bytes) -> Hashable | None:
        try:
            plain = self._plain.decode(data)
        except self._errors:
            return None
        request_id = plain.get("id") if isinstance(plain, dict) else None
        return request_id if isinstance(request_id, str | int) and not isinstance(request_id, bool) else None

    # Pickled to the worker by its types; the decoders are rebuilt there.
    def __reduce__(self) -> tuple[Any, tuple[type, ...]]:
        return (MsgspecCodec, self.types)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MsgspecCodec) and other.types == self.types

    def __hash__(self) -> int:
        return hash(self.types)


def _wire_id(request_id: Hashable) -> str | int:
    if isinstance(request_id, str | int) and not isinstance(request_id, bool):
        return request_id
    raise CodecError(f"with MsgspecCodec request ids must be str or int, got {request_id!r}")


def _tuples(value: Any) -> Any:
    # MessagePack has arrays, not tuples; the framework's control messages are tuples.
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value
