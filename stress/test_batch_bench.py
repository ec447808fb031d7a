"""Issue 27's benchmark: batching in the main process against one request per model call, and
against LitServe batched, over the same fake model (5 ms per call + 0.1 ms per item, one call at
a time), 2 HTTP workers each, the same closed-loop clients, in one run.

Unary: for each round (3) and each server (the order rotated each round), the server is started,
measured at 1, 8, 32 and 64 clients (3 s each, after a warm-up), and stopped: LitServe's loops
poll, so a LitServe left idle beside the others would tax their figures. Each figure is the median
of the three rounds. The client is ``stress/loadgen.py`` in a process of its own (wrk is not
installed here; the same generator measured 5.6k-17k req/s against plain FastAPI on this machine,
so at the few thousand req/s measured here it is not what caps a server).

- req/s, p50 and p99 latency (ms) at the client;
- mean batch: requests per model call, from the model's own books; model busy: the share of the
  measured window the model spent in calls (the warm-up is a load run of its own, before it);
- CPU/req: CPU of every process of the server per request, in ms (``schedstat``'s nanoseconds):
  the HTTP workers, and the relay and engine (this process's threads but its main one, which runs
  the test); for LitServe its whole process group (API servers, inference worker, and its loops'
  polling between requests).
- ``engine.batch, max_wait 0``, at one client only: the batcher's own cost at batch size 1,
  without the 2 ms it waits for company (which also lets every process of the path go cold).

Streams: step = 5 ms + 0.05 ms per active stream; 32 streams of 16-256 tokens (fixed seed), sent
20 ms apart, after a warm-up wave of 8 short streams (as the unary runs warm up: a worker's first
stream pays for first-request costs, and the p99 of 32 streams is about their slowest); tokens/s
over the wave and time to first token. ``steps()`` (continuous batching)
against static batching (a batch runs until its last stream ends; no joins) and one generator per
request (every token a model call of its own).

Nothing here asserts a timing: the checks are that every request got a 200 and every stream all
its tokens. The figures are printed, and copied into docs/performance.md.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import pytest

from stress.batch_bench_servers import StreamMode, UnaryMode, stream_server, unary_server
from stress.fake_gpu import CALL_SECONDS, ITEM_SECONDS, MAX_BATCH, STEP_ITEM_SECONDS, WORKERS, FakeGPU
from stress.figures import Figures
from stress.loadgen import LoadSpec, percentile, run_load
from stress.servers import threads_cpu_seconds
from stress.stream_waves import WaveSpec, run_wave

pytestmark = pytest.mark.stress

LEVELS = (1, 8, 32, 64)
ROUNDS = 3
SECONDS = 3.0
BODY = b'{"input": "hello world"}'
STREAMS = 32
GAP = 0.02
ROOT = Path(__file__).resolve().parents[1]

# A server under test: started with its own model, yields (port, the pids whose CPU it uses).
Serve = Callable[[FakeGPU], AbstractContextManager[tuple[int, list[int]]]]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def _process_cpu(pids: list[int]) -> float:
    """CPU seconds used so far by ``pids``; for this process, by its threads other than the main
    one (the relay's and the engine's: the main thread runs this test, spawning load generators)."""
    main = frozenset({threading.main_thread().native_id or 0})
    return sum(threads_cpu_seconds(pid, main if pid == os.getpid() else frozenset()) for pid in pids)


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(") ", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                pids.append(int(entry))
    return pids


def _ours_unary(mode: UnaryMode, log_dir: Path) -> Serve:
    @contextmanager
    def serve(gpu: FakeGPU) -> Iterator[tuple[int, list[int]]]:
        with unary_server(mode, gpu, log_dir) as server:
            # This process hosts the relay and the engine (and nothing else runs here meanwhile).
            assert server.port is not None
            yield server.port, [os.getpid(), *(p.pid for p in server.processes if p.pid is not None)]

    return serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _litserve(log_dir: Path) -> Serve:
    @contextmanager
    def serve(gpu: FakeGPU) -> Iterator[tuple[int, list[int]]]:
        with open(log_dir / "bench-litserve.log", "ab") as log:
            with _litserve_on(gpu, log.fileno()) as served:
                yield served

    return serve


@contextmanager
def _litserve_on(gpu: FakeGPU, log: int) -> Iterator[tuple[int, list[int]]]:
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "stress.litserve_server",
        str(port),
        gpu.path,
        str(CALL_SECONDS),
        str(ITEM_SECONDS),
    ]
    # A session of its own: its API servers and inference worker are one process group, stopped together.
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"LitServe exited with {process.returncode} before it was ready")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("LitServe was not ready within 120 s")
            time.sleep(0.2)  # polling a server we don't control for readiness; no event to wait on
        yield port, _group_pids(process.pid)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        for pid in _group_pids(process.pid):  # what outlived its parent: still ours, by pid
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(900)  # 3 rounds of 4 servers at 4 client counts: ~5 minutes on this machine
def test_stress_batching_unary(stress_logs: Path, figures: Figures) -> None:
    servers: dict[str, tuple[Serve, str]] = {
        "handle (unbatched)": (_ours_unary("handle", stress_logs), "/infer"),
        "engine.batch": (_ours_unary("batch", stress_logs), "/infer"),
        "engine.batch, max_wait 0": (_ours_unary("batch-nowait", stress_logs), "/infer"),
    }
    only_one_client = {"engine.batch, max_wait 0"}
    try:
        import litserve

        servers[f"LitServe {litserve.__version__} batched"] = (_litserve(stress_logs), "/predict")
    except ImportError:
        print("litserve is not installed (pip install litserve): its side is skipped")
    names = list(servers)
    measured: dict[tuple[str, int], list[list[float]]] = {}
    for round_ in range(ROUNDS):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            serve, path = servers[name]
            gpu = FakeGPU.create(CALL_SECONDS, ITEM_SECONDS)
            try:
                with serve(gpu) as (port, pids):
                    for clients in LEVELS[:1] if name in only_one_client else LEVELS:
                        measured.setdefault((name, clients), []).append(_unary(port, path, pids, gpu, clients))
            finally:
                gpu.close(unlink=True)
    rows = []
    lit = next((n for n in names if n.startswith("LitServe")), None)
    for clients in LEVELS:
        for name in names:
            if (name, clients) not in measured:
                continue
            figures_ = [statistics.median(column) for column in zip(*measured[(name, clients)], strict=True)]
            rate, p50, p99, batch, busy, cpu = figures_
            versus = ""
            if lit is not None and name != lit:
                versus = f"{rate / statistics.median(r[0] for r in measured[(lit, clients)]):.2f}"
            rows.append(
                [str(clients), name, f"{rate:.0f}", versus, _ms(p50), _ms(p99), f"{batch:.1f}", f"{busy:.0%}", _ms(cpu)]
            )
    ceiling = MAX_BATCH / (CALL_SECONDS + MAX_BATCH * ITEM_SECONDS)
    figures.table(
        f"Batching, unary: fake model 5 ms/call + 0.1 ms/item, one call at a time, {WORKERS} HTTP workers; "
        f"the model alone allows {ceiling:.0f} req/s at batches of {MAX_BATCH} (medians of {ROUNDS} rounds, "
        f"{SECONDS:g} s per figure)",
        ["clients", "server", "req/s", "vs LitServe", "p50 ms", "p99 ms", "mean batch", "model busy", "CPU ms/req"],
        rows,
    )


def _unary(port: int, path: str, pids: list[int], gpu: FakeGPU, clients: int) -> list[float]:
    # The warm-up is a load run of its own: the measured run then starts with no request in
    # flight, so the model's books between the two runs' ends hold the measured window's calls
    # alone (the load generator's start-up, in between, sends nothing).
    warmup = max(20, 2 * clients)
    run_load(LoadSpec(port, path, BODY, clients, requests=warmup))
    books, cpu = gpu.books(), _process_cpu(pids)
    result = run_load(LoadSpec(port, path, BODY, clients, duration=SECONDS))
    assert result.count and result.statuses == {200: result.count}, result.statuses
    used = gpu.books().since(books)
    return [
        result.rate,
        percentile(result.latencies, 0.5),
        percentile(result.latencies, 0.99),
        used.mean_batch,
        used.busy / result.elapsed,
        (_process_cpu(pids) - cpu) / result.count,
    ]


@pytest.mark.timeout(600)  # 3 rounds of 3 servers, one wave each: per-request alone is ~30 s a wave
def test_stress_batching_streams(stress_logs: Path, figures: Figures) -> None:
    lengths = tuple(random.Random(27).randint(16, 256) for _ in range(STREAMS))
    modes: list[StreamMode] = ["steps", "static", "per-request"]
    measured: dict[str, list[list[float]]] = {mode: [] for mode in modes}
    for round_ in range(ROUNDS):
        for mode in modes[round_:] + modes[:round_]:
            gpu = FakeGPU.create(CALL_SECONDS, STEP_ITEM_SECONDS)
            try:
                with stream_server(mode, gpu, stress_logs) as server:
                    assert server.port is not None
                    warmup = run_wave(WaveSpec(server.port, (4,) * 8, 0.0))
                    assert [s.tokens for s in warmup.streams] == [4] * 8
                    books = gpu.books()
                    wave = run_wave(WaveSpec(server.port, lengths, GAP))
                    used = gpu.books().since(books)
            finally:
                gpu.close(unlink=True)
            assert [s.status for s in wave.streams] == [200] * STREAMS
            assert [s.tokens for s in wave.streams] == list(lengths)
            ttft = [s.first_token for s in wave.streams]
            # A step's length as the model ran them in this wave (5 ms + 0.05 ms per active stream):
            # "3 steps" of TTFT means three of these, not three steps of one stream.
            mean_step = used.busy / used.calls
            measured[mode].append(
                [
                    wave.token_rate,
                    percentile(ttft, 0.5),
                    percentile(ttft, 0.99),
                    used.mean_batch,
                    wave.elapsed,
                    mean_step,
                ]
            )
    step = CALL_SECONDS + STEP_ITEM_SECONDS
    base = statistics.median(r[0] for r in measured["per-request"])
    rows = []
    for mode in modes:
        rate, p50, p99, active, elapsed, mean_step = (statistics.median(c) for c in zip(*measured[mode], strict=True))
        label = {"steps": "engine.steps", "static": "static batches", "per-request": "generator per request"}[mode]
        rows.append(
            [
                label,
                f"{rate:.0f}",
                f"{rate / base:.2f}",
                _ms(p50),
                _ms(p99),
                _ms(mean_step),
                f"{p99 / mean_step:.1f}",
                f"{p99 / step:.1f}",
                f"{active:.1f}",
                f"{elapsed:.2f}",
            ]
        )
    figures.table(
        f"Batching, streams: {STREAMS} streams of 16-256 tokens ({sum(lengths)} in all) sent {GAP * 1e3:g} ms apart; "
        f"step 5 ms + 0.05 ms per active stream; p99 in steps: TTFT p99 / the wave's mean step (the model's "
        f"busy time / its calls), and / {step * 1e3:.2f} ms (a step of one stream) (medians of {ROUNDS} rounds)",
        [
            "server",
            "tokens/s",
            "vs per-request",
            "TTFT p50 ms",
            "TTFT p99 ms",
            "mean step ms",
            "p99 in steps",
            f"p99 / {step * 1e3:.2f} ms",
            "streams/step",
            "wave s",
        ],
        rows,
    )
