"""(a) unary requests/s and latency, (b) streaming chunks/s and time to first chunk: the IPC path
beside the same routes answered in-process, in one run, with the load generator in its own process.
Interleaved (ceiling, then IPC, at each level) so a change in the machine's load hits both.

Two IPC servers: "put" is the plainest user code (the ``IPC`` dependency, a main loop calling
``response_q.put``); "batch" is what the README recommends for speed (the channel from
``request.app.state``, replies through a ``ReplyBatcher``). The streaming routes write the tokens
that are already waiting in one send, as ``sse_response`` does; the in-process generator never
has tokens waiting, so it writes one per send."""

from __future__ import annotations

import httpx
import pytest

from isolated_api import Server
from stress.figures import Figures
from stress.loadgen import LoadResult, LoadSpec, percentile, run_load
from tests.helpers import wait_until

pytestmark = pytest.mark.stress

BODY = b'{"text": "hello world"}'
CHUNKS_PER_STREAM = 256


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def _unary(url: str, concurrency: int, path: str = "/echo") -> LoadResult:
    requests = 2000 if concurrency == 1 else 6000
    spec = LoadSpec(_port(url), path, BODY, concurrency, requests=requests, warmup=max(200, 2 * concurrency))
    result = run_load(spec)
    assert result.statuses == {200: requests}, result.statuses
    return result


def _streams(url: str, concurrency: int) -> LoadResult:
    streams = 40 if concurrency == 1 else 4 * concurrency
    body = f'{{"count": {CHUNKS_PER_STREAM}}}'.encode()
    spec = LoadSpec(_port(url), "/stream", body, concurrency, requests=streams, warmup=concurrency, mode="stream")
    result = run_load(spec)
    assert result.statuses == {200: streams}, result.statuses
    # Every chunk of every stream arrived: none lost, none merged away.
    assert result.chunks == streams * CHUNKS_PER_STREAM
    return result


def _check_drained(server: Server, url: str) -> None:
    load = httpx.get(f"{url}/load", timeout=10).json()
    assert load["pending"] == 0 and load["rejected"] == 0
    relay = server.ipc
    assert relay is not None
    wait_until(lambda: relay.route_count == 0, 10.0, "the relay to forget every request")


@pytest.mark.timeout(400)
def test_stress_unary_ipc_vs_in_process(
    ipc: tuple[Server, str], ipc_batched: tuple[Server, str], ceiling: tuple[int, str], figures: Figures
) -> None:
    rows = []
    for concurrency in (1, 16, 64, 256):
        base = _unary(ceiling[1], concurrency)
        plain = _unary(ipc[1], concurrency)
        batched = _unary(ipc_batched[1], concurrency, "/echo-state")
        base_p50 = percentile(base.latencies, 0.5)
        row = [str(concurrency), f"{base.rate:.0f}"]
        for ours in (plain, batched):
            row += [f"{ours.rate:.0f}", f"{ours.rate / base.rate:.2f}"]
        row.append(_ms(base_p50))
        for ours in (plain, batched):
            row.append(_ms(percentile(ours.latencies, 0.5) - base_p50))
        row += [_ms(percentile(base.latencies, 0.99)), _ms(percentile(plain.latencies, 0.99))]
        rows.append(row)
        # A generous sanity bound, not a performance target: the IPC path is not pathologically slow.
        assert min(plain.rate, batched.rate) > 0.05 * base.rate
    figures.table(
        "unary POST /echo: in-process ceiling vs IPC path; put: `channel: IPC` dependency, main loop "
        "replying with response_q.put; batch: channel from request.app.state, main loop replying "
        "through a ReplyBatcher (requests/s, latency ms)",
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
        ],
        rows,
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
    for concurrency in (1, 32):
        base = _streams(ceiling[1], concurrency)
        variants = [_streams(ipc[1], concurrency), _streams(ipc_batched[1], concurrency)]
        variants.append(_streams(engine_ipc[1], concurrency))
        base_first = percentile(base.first_chunk, 0.5)
        row = [str(concurrency), f"{base.chunk_rate:.0f}"]
        for ours in variants:
            row += [f"{ours.chunk_rate:.0f}", f"{ours.chunk_rate / base.chunk_rate:.2f}"]
        row.append(_ms(base_first))
        for ours in variants:
            row.append(_ms(percentile(ours.first_chunk, 0.5) - base_first))
        rows.append(row)
        assert min(ours.chunk_rate for ours in variants) > 0.01 * base.chunk_rate
    figures.table(
        f"streaming POST /stream, {CHUNKS_PER_STREAM} chunks each: in-process generator vs IPC path; main "
        "process: a loop with response_q.put (put), with a ReplyBatcher (batch), an Engine generator "
        "handler (engine) (chunks/s, time to first chunk ms)",
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
