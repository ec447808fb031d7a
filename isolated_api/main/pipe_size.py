"""Growing a worker's private pipes, where the system allows it.

A pipe holds 64 KiB by default on Linux: a 16 MiB frame crosses in 256 fills, each a wake-up of the
reader and a partial write the writer must retry. Grown to 1 MiB (``/proc/sys/fs/pipe-max-size``
for an unprivileged process, by default) it takes 16. Where it is refused (another system, a lower
maximum, the user over ``/proc/sys/fs/pipe-user-pages-soft``) the pipe keeps its size: nothing but
speed depends on it.
"""

from __future__ import annotations

import fcntl

# What one pipe may hold when the system lets it grow.
PIPE_SIZE = 1 << 20
_SET_PIPE_SIZE: int | None = getattr(fcntl, "F_SETPIPE_SZ", None)
_GET_PIPE_SIZE: int | None = getattr(fcntl, "F_GETPIPE_SZ", None)


def grow_pipe(fd: int, size: int = PIPE_SIZE) -> None:
    if _SET_PIPE_SIZE is None:
        return
    try:
        fcntl.fcntl(fd, _SET_PIPE_SIZE, size)
    except OSError:  # EPERM past the allowed maximum, EBUSY if it holds more: kept as it is
        pass


def pipe_size(fd: int) -> int | None:
    """What the pipe holds (None where the system can't say)."""
    if _GET_PIPE_SIZE is None:
        return None
    return fcntl.fcntl(fd, _GET_PIPE_SIZE)
