"""new_request_id: unique across threads, across processes (forked or spawned), and cheap enough
to replace uuid4 in a hot route."""

from __future__ import annotations

import multiprocessing
import threading
from multiprocessing.connection import Connection

from isolated_api.shared.request_ids import new_request_id


def _ids_into(conn: Connection, count: int) -> None:
    conn.send([new_request_id() for _ in range(count)])
    conn.close()


def _ids_from_child(method: str, count: int) -> list[str]:
    ctx = multiprocessing.get_context("fork") if method == "fork" else multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_ids_into, args=(child, count))
    process.start()
    child.close()
    try:
        assert parent.poll(30), f"the {method} child sent no ids"
        ids: list[str] = parent.recv()
    finally:
        process.join(10)
    return ids


def test_request_ids_are_unique_across_threads() -> None:
    """Steps: 8 threads take 5,000 ids each at once. Expect 40,000 distinct strings."""
    taken: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def take(out: list[str]) -> None:
        start.wait()
        out.extend(new_request_id() for _ in range(5000))

    threads = [threading.Thread(target=take, args=(out,)) for out in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    every = [i for out in taken for i in out]
    assert len(every) == 40_000 and len(set(every)) == 40_000
    assert all(isinstance(i, str) for i in every)


def test_request_ids_never_repeat_in_forked_or_spawned_children() -> None:
    """Steps: take ids here, then in a forked child (which inherits this process's counter) and a
    spawned one, then here again. Expect no id twice, and a different prefix in each process."""
    mine = [new_request_id() for _ in range(100)]
    forked = _ids_from_child("fork", 100)
    spawned = _ids_from_child("spawn", 100)
    mine += [new_request_id() for _ in range(100)]
    every = mine + forked + spawned
    assert len(set(every)) == len(every) == 400
    prefixes = {i.split("-")[0] for i in every}
    assert len(prefixes) == 3
