"""A worker's lifeline, this process's end: read once the worker is dead, and closed by whichever
thread gets there first (the supervisor's on a death, ``stop()``'s caller)."""

from __future__ import annotations

import multiprocessing
import os
import threading

from isolated_api.main.worker_process import Lifeline

ATTEMPTS = 2000


def test_lifeline_closed_by_two_threads_at_once_is_closed_once() -> None:
    """Steps, 2,000 times: two threads close the same lifeline at the same moment (a barrier), as
    the supervisor's thread handling a worker's death and ``stop()`` can. Expect no error, ever.
    ``Connection.close`` alone fails here: both threads pass its check before either clears the
    handle, and the second ``os.close`` gets EBADF (8 to 61 times in 2,000 in five tries on this
    machine; once in CI, from ``Supervisor.stop``)."""
    errors: list[OSError] = []
    for _ in range(ATTEMPTS):
        ours, theirs = multiprocessing.Pipe(duplex=True)
        lifeline = Lifeline(ours)
        both_ready = threading.Barrier(2)

        def close(lifeline: Lifeline = lifeline, both_ready: threading.Barrier = both_ready) -> None:
            both_ready.wait(10)
            try:
                lifeline.close()
            except OSError as exc:
                errors.append(exc)

        other = threading.Thread(target=close)
        other.start()
        close()
        other.join(10)
        theirs.close()
        assert ours.closed
    assert errors == []


def test_lifeline_tells_a_worker_that_served_and_says_no_once_closed() -> None:
    """Steps: the worker's end writes its byte; ask; then a fresh lifeline with nothing written
    whose worker end is closed (a death before serving); then ask a closed lifeline. Expect True,
    False, False, and no error."""
    ours, theirs = multiprocessing.Pipe(duplex=True)
    os.write(theirs.fileno(), b"s")
    theirs.close()
    served = Lifeline(ours)
    assert served.served() is True
    served.close()

    ours, theirs = multiprocessing.Pipe(duplex=True)
    theirs.close()
    died_early = Lifeline(ours)
    assert died_early.served() is False
    died_early.close()
    assert died_early.served() is False
