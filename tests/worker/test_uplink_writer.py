"""The worker's uplink writer (worker/uplink_writer.py) over a real pipe of the default 64 KiB, on
both event loops the worker may run (asyncio's and uvloop, which refuses to watch a descriptor
a transport uses): large frames leave from the caller's buffers, announced and in parts, small
frames pass them between parts unless told to stay behind, and nothing is lost or left open when
the link closes."""

from __future__ import annotations

import asyncio
import os
import threading
import tracemalloc
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from isolated_api.shared.framing import Body, FrameDecoder, Kind, frame, frame_head
from isolated_api.worker.uplink_writer import UplinkWriter
from tests.helpers import eventually

MiB = 1 << 20
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def _run(make_loop: Callable[[], asyncio.AbstractEventLoop], scenario: Coroutine[Any, Any, Any]) -> Any:
    loop = make_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(scenario, 60))
    finally:
        loop.close()


def _large(tag: bytes, payload: bytes) -> list[Body]:
    """A frame as PipeLink writes a large one: its header and head, then the payload."""
    return [frame_head(Kind.REQUEST, tag, len(payload)), payload]


def _bodies(data: bytes | bytearray) -> list[bytes]:
    """The frames' bodies as the main process's reader hands them on, in that order."""
    frames = FrameDecoder().feed(data)
    assert all(kind is Kind.REQUEST for kind, _ in frames)
    return [bytes(body) for _, body in frames]


class _Reader(threading.Thread):
    """Reads the pipe's read end until end-of-file, slowly at first when told to."""

    def __init__(self, fd: int, hold: threading.Event | None = None) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.hold = hold
        self.data = bytearray()

    def run(self) -> None:
        if self.hold is not None:
            self.hold.wait(30)
        while chunk := os.read(self.fd, 1 << 16):
            self.data += chunk
        os.close(self.fd)


class _Link:
    """A writer over the pipe's write end, as PipeLink makes one, and the file the transport owns."""

    def __init__(self, writer: UplinkWriter, transport: asyncio.WriteTransport, pipe: Any) -> None:
        self.writer, self.transport, self.pipe = writer, transport, pipe

    async def closed(self) -> None:
        """Closes the writer, then waits until the transport has closed its file."""
        self.writer.close()
        await eventually(lambda: self.pipe.closed, "the transport to close the pipe")


async def _link(write_fd: int, errors: list[str]) -> _Link:
    loop = asyncio.get_running_loop()
    pipe = os.fdopen(write_fd, "wb", buffering=0)
    transport, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, pipe)
    return _Link(UplinkWriter(transport, write_fd, errors.append), transport, pipe)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_uplink_writer_small_frames_pass_a_large_one_between_its_parts_and_a_held_one_stays_behind(
    loop_name: str,
) -> None:
    """Steps: with the reader held (the pipe fills at 64 KiB), writelines an 8 MiB frame, then a
    small frame, another large frame of 1 MiB, a second small frame and one that may not pass
    (a cancel); let the reader go. Expected: the two small frames arrive first, then the large
    ones intact and in order, then the one held behind them; while the pipe was full the writer
    held the rest as views (8 MiB waiting) and allocated under 1 MiB doing so (no copy of the
    payload); once all is read nothing waits."""
    read_fd, write_fd = os.pipe()
    hold = threading.Event()
    reader = _Reader(read_fd, hold)
    reader.start()
    first, second = os.urandom(8 * MiB), os.urandom(MiB)

    async def scenario() -> tuple[int, int]:
        errors: list[str] = []
        link = await _link(write_fd, errors)
        writer = link.writer
        tracemalloc.start()
        try:
            writer.writelines(_large(b"large-1", first))
            writer.write(frame(Kind.REQUEST, b"small-1"))
            writer.writelines(_large(b"large-2", second))
            writer.write(frame(Kind.REQUEST, b"small-2"))
            writer.write(frame(Kind.REQUEST, b"held"), may_pass=False)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        waiting = writer.waiting_bytes
        hold.set()
        await eventually(lambda: writer.waiting_bytes == 0, "the pipe to take what waits")
        await link.closed()
        assert errors == []
        return peak, waiting

    peak, waiting = _run(LOOPS[loop_name], scenario())
    reader.join(30)
    assert _bodies(reader.data) == [b"small-1", b"small-2", b"large-1" + first, b"large-2" + second, b"held"]
    assert waiting > 8 * MiB
    assert peak < MiB, f"writing 9 MiB allocated {peak} bytes: the payload was copied"


@pytest.mark.parametrize("loop_name", LOOPS)
def test_uplink_writer_a_large_write_behind_bytes_the_transport_holds_goes_after_them(loop_name: str) -> None:
    """Steps: with the reader held, write 1 MiB through the transport (it keeps what the pipe
    can't take), then writelines a large frame. Expected: the reader gets the transport's bytes
    first, then the frame, intact."""
    read_fd, write_fd = os.pipe()
    hold = threading.Event()
    reader = _Reader(read_fd, hold)
    reader.start()
    before, frame_payload = os.urandom(MiB), os.urandom(2 * MiB)

    async def scenario() -> None:
        errors: list[str] = []
        link = await _link(write_fd, errors)
        link.writer.write(frame(Kind.REQUEST, before))
        assert link.transport.get_write_buffer_size() > 0
        link.writer.writelines(_large(b"head", frame_payload))
        hold.set()
        await link.closed()
        assert errors == []

    _run(LOOPS[loop_name], scenario())
    reader.join(30)
    assert _bodies(reader.data) == [before, b"head" + frame_payload]


@pytest.mark.parametrize("loop_name", LOOPS)
def test_uplink_writer_closing_with_bytes_waiting_still_writes_them_then_the_reader_sees_the_end(
    loop_name: str,
) -> None:
    """Steps: with the reader held, writelines a 4 MiB frame and a small one, close the writer,
    let the reader go. Expected: the reader gets both frames, then end-of-file (the writer's own descriptor for the
    pipe was closed too: a worker that closes its link does not hide that from the main process)."""
    read_fd, write_fd = os.pipe()
    hold = threading.Event()
    reader = _Reader(read_fd, hold)
    reader.start()
    payload = os.urandom(4 * MiB)

    async def scenario() -> None:
        link = await _link(write_fd, [])
        link.writer.writelines(_large(b"head", payload))
        link.writer.write(frame(Kind.REQUEST, b"small"))
        assert link.writer.waiting_bytes > 0
        hold.set()
        await link.closed()

    _run(LOOPS[loop_name], scenario())
    reader.join(30)
    assert not reader.is_alive(), "the reader saw no end-of-file: a descriptor of the pipe stayed open"
    assert _bodies(reader.data) == [b"small", b"head" + payload]


@pytest.mark.parametrize("loop_name", LOOPS)
def test_uplink_writer_a_reader_that_goes_away_fails_the_link_once_and_later_writes_are_dropped(
    loop_name: str,
) -> None:
    """Steps: writelines 4 MiB into a pipe nobody reads (it fills), then close the read end.
    Expected: the writer reports the link lost (once), holds nothing more, and later writes raise
    nothing."""
    read_fd, write_fd = os.pipe()

    async def scenario() -> list[str]:
        errors: list[str] = []
        link = await _link(write_fd, errors)
        writer = link.writer
        writer.writelines(_large(b"head", os.urandom(4 * MiB)))
        assert writer.waiting_bytes > 0
        os.close(read_fd)
        await eventually(lambda: bool(errors), "the writer to report the link lost")
        assert writer.waiting_bytes == 0
        writer.write(frame(Kind.REQUEST, b"after"))
        writer.writelines(_large(b"after", os.urandom(MiB)))
        await link.closed()
        return errors

    errors = _run(LOOPS[loop_name], scenario())
    assert len(errors) == 1 and "stopped reading" in errors[0]
