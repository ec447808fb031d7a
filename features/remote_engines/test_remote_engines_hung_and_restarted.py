"""A hung engine (its Python stuck, its TCP connection up) is found by pings; a late reply is
dropped and counted. An engine restarted at its address gets traffic again, and never a request
from before its crash."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

pytest.importorskip("zmq", reason="this slice needs pyzmq: pip install 'isolated_api[remote]'")
pytest.importorskip("msgspec", reason="this slice needs msgspec: pip install 'isolated_api[msgspec]'")

from isolated_api.testing import running, wait_until

from .engine_farm import (
    EngineFarm,
    api_builder,
    engine_view,
    post_all,
    wait_ready,
)


def test_remote_engines_hung_engine_is_lost_by_pings_and_its_late_reply_dropped(farm: EngineFarm) -> None:
    engines = [farm.start("a"), farm.start("b")]
    # ping_timeout 1.5 s (api_builder): far shorter than the 5 s hang.
    with running(api_builder(*(e.address for e in engines)).build()) as base:
        wait_ready(base, 2)
        results: list[httpx.Response] = []
        answered_after: list[float] = []

        def send_hang() -> None:
            started = time.monotonic()
            results.extend(post_all(base, "/generate", [{"prompt": "h", "hang": 5.0}]))
            answered_after.append(time.monotonic() - started)

        hangs = threading.Thread(target=send_hang)
        hangs.start()
        hangs.join(30)
        lost = [e for e in engines if engine_view(base, e.address)["state"] == "lost"]
        assert len(lost) == 1, [engine_view(base, e.address) for e in engines]
        stuck, healthy = (engines[0], engines[1]) if lost[0] is engines[0] else (engines[1], engines[0])
        detail = results[0].json()
        # Ended by the missing pongs, not by the hang's end or the 20 s response timeout.
        assert results[0].status_code == 503 and "no answer to pings" in detail["detail"], detail
        assert answered_after[0] < 5.0, answered_after
        # Meanwhile the other engine serves.
        answers = post_all(base, "/generate", [{"prompt": f"n{i}"} for i in range(5)])
        assert [(r.status_code, r.json()["engine"]) for r in answers] == [(200, healthy.name)] * 5

        # The hang ends and the engine answers the job nobody waits for any more. Its host also
        # holds the cancel the API sent when it gave up on the engine: whichever its threads
        # handle first decides where the reply dies. Either the host drops it (the request was
        # cancelled) or the API does (a late reply). Never both, never delivered.
        def where_the_reply_died() -> tuple[int, int]:
            view = engine_view(base, stuck.address)
            return view["late_replies"], view["engine_dropped_replies"]

        wait_until(lambda: sum(where_the_reply_died()) == 1, 20, "the reply dropped and counted on one side")
        wait_until(lambda: engine_view(base, stuck.address)["state"] == "ready", 20, "the engine ready again")
        assert where_the_reply_died() in ((1, 0), (0, 1))
        assert stuck.seen_jobs() == ["h"] and "h" not in healthy.seen_jobs()


def test_remote_engines_engine_restarted_at_its_address_serves_again_only_new_requests(farm: EngineFarm) -> None:
    first, other = farm.start("first"), farm.start("other")
    with running(api_builder(first.address, other.address).build()) as base:
        wait_ready(base, 2)
        # Work queued on "first" when it dies: one job running, several waiting behind it.
        before = threading.Thread(
            target=post_all, args=(base, "/generate", [{"prompt": f"old{i}", "delay": 0.5} for i in range(8)])
        )
        before.start()
        wait_until(lambda: any(p.startswith("old") for p in first.seen_jobs()), 10, "old work on 'first'")
        first.kill()
        before.join(30)
        # While it is down, requests go to the other engine (nothing is queued for a dead one).
        down = post_all(base, "/generate", [{"prompt": f"gap{i}"} for i in range(6)])
        assert [(r.status_code, r.json()["engine"]) for r in down] == [(200, "other")] * 6
        restarted_at = time.monotonic()
        again = farm.start("first-again", bind=first.address)
        wait_until(lambda: engine_view(base, first.address)["state"] == "ready", 10, "the restarted engine ready")
        back_after = time.monotonic() - restarted_at
        answers = post_all(base, "/generate", [{"prompt": f"new{i}"} for i in range(10)])
        assert all(r.status_code == 200 for r in answers)
        assert "first-again" in {r.json()["engine"] for r in answers}
        # The new process read only requests issued after it started.
        assert all(p.startswith("new") for p in again.seen_jobs()), again.seen
        assert back_after < 10
