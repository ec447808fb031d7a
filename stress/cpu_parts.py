"""Charges py-spy's samples of an HTTP child to the parts of the request path they were spent in.

A sample is a stack of Python frames (outermost first), as ``py-spy record --format raw`` writes
them: ``frame;frame;...;frame count`` with each frame ``function (path/file.py:line)``. Without
``--native`` the time a C extension spends (httptools parsing, a socket write in uvloop, a pickle)
shows up in the Python frame that called it, so the innermost frame says where the time went.
Walking from that frame outwards, the first one that belongs to a part decides; standard-library
frames in between (``json``, ``email``, ``contextlib``...) are charged to whoever called them. A
sample with no frame of any part (uvloop's own work: polling, reading sockets, running
callbacks, with at most ``asyncio/runners.py`` on the stack) is the event loop's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

IPC_ENCODE = "IPC: encode, decode"
IPC_CHANNEL = "IPC: channel, pipes"
IPC_PARTS = (IPC_ENCODE, IPC_CHANNEL)

# (part, path prefixes), checked in this order for each frame.
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # This project's way to the main process: encoding and decoding the messages (pickling, ids,
    # frames), and the rest (registering and waking the waiter, its timer, the pipes, the
    # wrapper that hands a route its channel).
    (IPC_ENCODE, ("isolated_api/shared/framing.py", "isolated_api/shared/codecs.py")),
    (
        IPC_CHANNEL,
        (
            "isolated_api/worker/channel.py",
            "isolated_api/worker/chunk_stream.py",
            "isolated_api/worker/deadlines.py",
            "isolated_api/worker/pipe_link.py",
            "isolated_api/worker/dependencies.py",
            "isolated_api/shared/",
        ),
    ),
    ("handler", ("stress/",)),
    # This project's middleware (metrics, disconnect watch...), on both servers alike.
    ("our middleware", ("isolated_api/",)),
    ("HTTP", ("uvicorn/", "httptools/", "h11/")),
    ("framework", ("fastapi/", "starlette/", "pydantic/", "pydantic_core/", "anyio/")),
)
EVENT_LOOP = "event loop"
ORDER = ("HTTP", EVENT_LOOP, "framework", IPC_ENCODE, IPC_CHANNEL, "our middleware", "handler", "other")


def _file_of(frame: str) -> str:
    # "function (path/file.py:123)" -> "path/file.py"
    start = frame.rfind(" (")
    return frame[start + 2 :].rsplit(":", 1)[0] if start >= 0 else frame


def part_of(frames: list[str]) -> str:
    """The part a sample's stack (outermost frame first) is charged to."""
    for frame in reversed(frames):
        path = _file_of(frame)
        for part, prefixes in PARTS:
            if path.startswith(prefixes):
                return part
    loop_only = all(_file_of(frame).startswith(("asyncio/", "uvloop/")) for frame in frames)
    return EVENT_LOOP if loop_only else "other"


def parse_raw(lines: Iterable[str]) -> Counter[str]:
    """Samples per part, from ``py-spy record --format raw`` output."""
    samples: Counter[str] = Counter()
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        samples[part_of(stack.split(";") if stack.strip() else [])] += int(count)
    return samples
