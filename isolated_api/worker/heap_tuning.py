"""The HTTP worker keeps the memory of large bodies for the next one instead of giving it back.

Each large request costs the worker fresh buffers of its size: the body Starlette joins, the
reply's frame read from the main process, the reply unpickled. glibc hands memory back to the
kernel when a freed block at the top of its heap passes its trim threshold (128 KiB to start;
about twice the largest block freed since), so the next request's buffers are new pages, each
faulted in on first touch. On the VMs measured, a 16 MiB round trip so spent more in page faults
(about 10,000 a request, most of the worker's CPU, in the kernel) than in copying.

So the worker raises two glibc settings (``mallopt``), sized from the largest body it accepts:
blocks up to that size (and at most 32 MiB, glibc's bound) come from its heap rather than their
own mapping, and up to four such bodies' worth of freed memory stays in it (a request's body, the
frames and the reply of one round trip are alive at once). What this costs: a worker that once
served large bodies keeps up to that much resident while idle; under the default 1 MiB body
limit, 4 MiB. Measured (tests/server/test_large_round_trip.py): 16 MiB round trips cost the worker
about 8,000 page faults each with glibc's defaults, and nearly none with these. Not glibc (musl,
macOS): nothing is changed.
"""

from __future__ import annotations

import ctypes
import logging

logger = logging.getLogger("isolated_api.worker")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses a larger mmap threshold on 64-bit (HEAP_MAX_SIZE / 2).
_MMAP_THRESHOLD_MAX = 32 << 20
# Below this glibc's own settings are as good.
_WORTH_IT = 1 << 20


def keep_large_buffers(largest_body: int) -> bool:
    """Raises glibc's thresholds for bodies up to ``largest_body`` bytes; False where nothing was
    changed (not glibc, or bodies too small to matter)."""
    if largest_body < _WORTH_IT:
        return False
    try:
        # The process's own symbols, libc's among them (find_library would run ldconfig).
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it: elsewhere mallopt differs
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mmap_threshold = min(largest_body + (1 << 20), _MMAP_THRESHOLD_MAX)
    # Setting one turns glibc's own adjustment of both off: set both.
    done = mallopt(_M_MMAP_THRESHOLD, mmap_threshold) and mallopt(_M_TRIM_THRESHOLD, min(4 * largest_body, 1 << 30))
    if not done:
        logger.debug("glibc refused the heap thresholds for bodies of %d bytes", largest_body)
    return bool(done)
