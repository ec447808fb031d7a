"""(a) unary requests/s and latency, (b) streaming chunks/s and time to first chunk: the IPC path
beside the same routes answered in-process, in one run, with the load generator in its own process.

Interleaved: at each level, five rounds, each measuring every server once (in a rotated order), so
a change in the machine's load hits them all; a ratio is the median of the five rounds' ratios,
a rate the median of its five rounds. On a shared 2-core VM one long run per server moved by
10-30% from run to run; rounds keep a burst of load elsewhere from deciding a ratio. Each
measurement lasts a second or two: with 2,000 requests (~0.6 s) the five rounds' ratios at 16
connections spread over 0.62-1.22 and their median over 0.75-1.05 in four runs; with 6,000
requests, 0.77-1.18 and 0.92-0.98 (same code, same machine, one after the other).

Two IPC servers: "put" is the plainest user code (the ``IPC`` dependency, a main loop calling
``response_q.put``); "batch" is what the README recommends for speed (the channel from
``request.app.state``, replies through a ``ReplyBatcher``). The streaming routes write the tokens
that are already waiting in one send, as ``sse_response`` does; the in-process generator never
has tokens waiting, so it writes one per send."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import httpx
import pytest

from isolated_api import Server
from isolated_api.testing import wait_until
from stress.figures import Figures
from stress.loadgen import LoadResult, LoadSpec, percentile, run_load
from stress.queue_floor import bare_queue_round_trip

pytestmark = pytest.mark.stress

BODY = b'{"text": "hello world"}'
CHUNKS_PER_STREAM = 256
ROUNDS = 5


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def _unary(url: str, path: str, concurrency: int) -> LoadResult:
    requests = 700 if concurrency == 1 else 6000
    spec = LoadSpec(_port(url), path, BODY, concurrency, requests=requests, warmup=max(200, 2 * concurrency))
    result = run_load(spec)
    assert result.statuses == {200: requests}, result.statuses
    return result


def _streams(url: str, path: str, concurrency: int) -> LoadResult:
    streams = 64 if concurrency == 1 else 6 * concurrency
    body = f'{{"count": {CHUNKS_PER_STREAM}}}'.encode()
    spec = LoadSpec(_port(url), path, body, concurrency, requests=streams, warmup=concurrency, mode="stream")
    result = run_load(spec)
    assert result.statuses == {200: streams}, result.statuses
    # Every chunk of every stream arrived: none lost, none merged away.
    assert result.chunks == streams * CHUNKS_PER_STREAM
    return result


def _rounds(
    targets: dict[str, tuple[str, str]],
    measure: Callable[[str, str, int], LoadResult],
    concurrency: int,
    floors: list[float] | None = None,
) -> dict[str, list[LoadResult]]:
    """``measure(url, path, concurrency)`` of each target ``ROUNDS`` times, rounds interleaved,
    the order rotated each round. With ``floors``, a bare queue round trip is measured after each
    round and appended to it: a floor taken once, in a fast or a slow moment of the VM, moved the
    one-connection figure in round trips by 0.3 between runs."""
    names = list(targets)
    results: dict[str, list[LoadResult]] = {name: [] for name in names}
    for round_ in range(ROUNDS):
        for name in names[round_:] + names[:round_]:
            results[name].append(measure(*targets[name], concurrency))
        if floors is not None:
            floors.append(bare_queue_round_trip())
    return results


def _rate(result: LoadResult) -> float:
    return result.rate


def _chunk_rate(result: LoadResult) -> float:
    return result.chunk_rate


def _latencies(result: LoadResult) -> list[float]:
    return result.latencies


def _first_chunks(result: LoadResult) -> list[float]:
    return result.first_chunk


def _median_ratio(ours: list[LoadResult], base: list[LoadResult], rate: Callable[[LoadResult], float]) -> float:
    return statistics.median(rate(o) / rate(b) for o, b in zip(ours, base, strict=True))


def _pooled(results: list[LoadResult], values: Callable[[LoadResult], list[float]], q: float) -> float:
    return percentile([v for result in results for v in values(result)], q)


def _check_drained(server: Server, url: str) -> None:
    load = httpx.get(f"{url}/load", timeout=10).json()
    assert load["pending"] == 0 and load["rejected"] == 0
    relay = server.ipc
    assert relay is not None, "a server in subprocess mode has its relay in this process"
    wait_until(lambda: relay.pending_count == 0, 10.0, "the relay to forget every request")


@pytest.mark.timeout(400)
def test_stress_unary_ipc_vs_in_process(
    ipc: tuple[Server, str], ipc_batched: tuple[Server, str], ceiling: tuple[int, str], figures: Figures
) -> None:
    rows = []
    targets = {"inproc": (ceiling[1], "/echo"), "put": (ipc[1], "/echo"), "batch": (ipc_batched[1], "/echo-state")}
    latencies, rate = _latencies, _rate
    floor_rows: list[list[str]] = []
    for concurrency in (1, 16, 64, 256):
        floors: list[float] = []
        runs = _rounds(targets, _unary, concurrency, floors if concurrency == 1 else None)
        base = runs["inproc"]
        base_p50 = _pooled(base, latencies, 0.5)
        row = [str(concurrency), f"{statistics.median(map(rate, base)):.0f}"]
        for name in ("put", "batch"):
            row += [f"{statistics.median(map(rate, runs[name])):.0f}", f"{_median_ratio(runs[name], base, rate):.2f}"]
        row.append(_ms(base_p50))
        for name in ("put", "batch"):
            row.append(_ms(_pooled(runs[name], latencies, 0.5) - base_p50))
        row += [_ms(_pooled(runs[name], latencies, 0.99)) for name in ("inproc", "put", "batch")]
        rows.append(row)
        if concurrency == 1:
            floor = statistics.median(floors)
            floor_rows.append([f"{_ms(floor)} ({_ms(min(floors))}-{_ms(max(floors))})"])
            for name in ("put", "batch"):
                over = _pooled(runs[name], latencies, 0.5) - base_p50
                floor_rows[0] += [_ms(over), f"{over / floor:.2f}"]
        # A generous sanity bound, not a performance target: the IPC path is not pathologically slow.
        assert min(r.rate for r in runs["put"] + runs["batch"]) > 0.05 * min(r.rate for r in base)
    figures.table(
        f"unary POST /echo: in-process ceiling vs IPC path; put: `channel: IPC` dependency, main loop "
        f"replying with response_q.put; batch: channel from request.app.state, main loop replying "
        f"through a ReplyBatcher (requests/s and ratio: medians of {ROUNDS} interleaved rounds; latency "
        f"ms, all rounds pooled)",
        [
            "conns",
            "inproc/s",
            "put/s",
            "ratio",
            "batch/s",
            "ratio",
            "inproc p50",
            "put +p50",
            "batch +p50",
            "inproc p99",
            "put p99",
            "batch p99",
        ],
        rows,
    )
    figures.table(
        "1 connection against the floor: a bare multiprocessing.Queue round trip between two processes "
        f"(p50 ms, measured after each of the {ROUNDS} 1-connection rounds: their median, and range), and each "
        "IPC path's p50 over in-process in ms and in such round trips",
        ["raw round trip", "put +p50", "round trips", "batch +p50", "round trips"],
        floor_rows,
    )
    for server, url in (ipc, ipc_batched):
        _check_drained(server, url)


@pytest.mark.timeout(400)
def test_stress_streaming_ipc_vs_in_process(
    ipc: tuple[Server, str],
    ipc_batched: tuple[Server, str],
    engine_ipc: tuple[Server, str],
    ceiling: tuple[int, str],
    figures: Figures,
) -> None:
    rows = []
    servers = {"inproc": ceiling[1], "put": ipc[1], "batch": ipc_batched[1], "engine": engine_ipc[1]}
    targets = {name: (url, "/stream") for name, url in servers.items()}
    first_chunk, chunk_rate = _first_chunks, _chunk_rate
    for concurrency in (1, 32):
        runs = _rounds(targets, _streams, concurrency)
        base = runs["inproc"]
        base_first = _pooled(base, first_chunk, 0.5)
        row = [str(concurrency), f"{statistics.median(map(chunk_rate, base)):.0f}"]
        for name in ("put", "batch", "engine"):
            ours = runs[name]
            row += [f"{statistics.median(map(chunk_rate, ours)):.0f}", f"{_median_ratio(ours, base, chunk_rate):.2f}"]
        row.append(_ms(base_first))
        for name in ("put", "batch", "engine"):
            row.append(_ms(_pooled(runs[name], first_chunk, 0.5) - base_first))
        rows.append(row)
        variants = runs["put"] + runs["batch"] + runs["engine"]
        assert min(r.chunk_rate for r in variants) > 0.01 * min(r.chunk_rate for r in base)
    figures.table(
        f"streaming POST /stream, {CHUNKS_PER_STREAM} chunks each: in-process generator vs IPC path; main "
        "process: a loop with response_q.put (put), with a ReplyBatcher (batch), an Engine generator "
        f"handler (engine) (chunks/s and ratio: medians of {ROUNDS} interleaved rounds; time to first chunk "
        f"ms, all rounds pooled)",
        [
            "streams",
            "inproc/s",
            "put/s",
            "ratio",
            "batch/s",
            "ratio",
            "engine/s",
            "ratio",
            "inproc ttfc",
            "put +ttfc",
            "batch +ttfc",
            "engine +ttfc",
        ],
        rows,
    )
    for server, url in (ipc, ipc_batched, engine_ipc):
        _check_drained(server, url)
