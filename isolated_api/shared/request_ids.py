"""Request ids unique across every process of a server, and cheap to make.

``uuid.uuid4().hex`` reads 16 bytes from the kernel for each id. ``new_request_id()`` is a random
64-bit prefix drawn once per process (again after a fork, so a forked worker never repeats its
parent's ids) and a counter, much cheaper (docs/performance.md, "Figures behind the code"). Two
processes share ids only if their prefixes collide (odds 2**-64 per pair); the relay needs ids
unique across all HTTP workers, and these are.
"""

from __future__ import annotations

import itertools
import os

_prefix = ""
_counter = itertools.count()


def _new_source() -> None:
    global _prefix, _counter
    _prefix = os.urandom(8).hex() + "-"
    _counter = itertools.count(1)


_new_source()
os.register_at_fork(after_in_child=_new_source)


def new_request_id() -> str:
    """A request id no other call in any process of this server returns (``"<16 hex>-<hex>"``).
    Safe from any thread: ``next()`` on the counter is one atomic step under the GIL."""
    return f"{_prefix}{next(_counter):x}"
