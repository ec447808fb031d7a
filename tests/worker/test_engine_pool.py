"""Which engine gets the next request: the least-loaded ready one, ties rotating."""

from __future__ import annotations

from collections import Counter

from isolated_api.worker.engine_pool import CONNECTING, LOST, READY, STALLED, EnginePool, EngineState


def _pool(*engines: EngineState) -> EnginePool:
    pool = EnginePool()
    pool.engines.extend(engines)
    return pool


def test_engine_pool_rotates_between_idle_equal_engines() -> None:
    a, b, c = EngineState("a", READY), EngineState("b", READY), EngineState("c", READY)
    pool = _pool(a, b, c)
    chosen: Counter[str] = Counter()
    for _ in range(300):
        engine = pool.choose()
        assert engine is not None, "three engines are ready: one is chosen"
        chosen[engine.address] += 1
    assert chosen == {"a": 100, "b": 100, "c": 100}


def test_engine_pool_prefers_the_least_loaded() -> None:
    busy, idle = EngineState("busy", READY, in_flight=5), EngineState("idle", READY, in_flight=1)
    assert _pool(busy, idle).choose() is idle
    # What others sent there counts too (reported at its last pong, minus this worker's share).
    crowded = EngineState("crowded", READY, in_flight=0, reported_pending=9, mine_at_pong=0)
    assert _pool(crowded, busy).choose() is busy


def test_engine_pool_scales_the_load_by_capacity() -> None:
    small = EngineState("small", READY, in_flight=3, capacity=4)  # 0.75 full
    big = EngineState("big", READY, in_flight=6, capacity=16)  # 0.375 full
    assert _pool(small, big).choose() is big


def test_engine_pool_chooses_only_ready_engines_and_honours_exclude() -> None:
    states = [EngineState(name, state) for name, state in [("c", CONNECTING), ("s", STALLED), ("l", LOST)]]
    ready = EngineState("r", READY, in_flight=100)
    pool = _pool(*states, ready)
    assert pool.choose() is ready
    assert pool.choose(exclude={id(ready)}) is None
    assert _pool().choose() is None


def test_engine_pool_problem_names_each_engine_when_none_is_ready() -> None:
    lost = EngineState("tcp://gpu-1:5700", LOST, problem="its connection closed")
    stalled = EngineState("tcp://gpu-2:5700", STALLED)
    pool = _pool(lost, stalled)
    assert pool.problem() == (
        "no engine is ready: tcp://gpu-1:5700 lost (its connection closed), tcp://gpu-2:5700 stalled"
    )
    stalled.state = READY
    assert pool.problem() is None
    assert _pool().problem() == "no engine address resolved yet"
