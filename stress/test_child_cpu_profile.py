"""Where the HTTP child's CPU goes per request, by part of the path (HTTP, event loop, framework,
IPC, middleware, handler), with the in-process server under the same load beside it.

py-spy samples each server's process while the load generator drives ``POST /echo`` over 64
connections; ``stress/cpu_parts.py`` charges every sample to a part, and the process's CPU time
over the whole load (from ``/proc``), divided by the requests served, is split by those shares.
The issue's target: the IPC path's share of the child's CPU (both IPC parts) below the HTTP share. Needs py-spy
(a dev dependency) and the right to attach to a process of the same user (ptrace); skipped
otherwise, saying why.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from isolated_api import Server
from isolated_api.testing import wait_until
from stress.cpu_parts import IPC_PARTS, ORDER, parse_raw
from stress.figures import Figures
from stress.loadgen import LoadJob, LoadSpec
from stress.servers import cpu_seconds

BODY = b'{"text": "hello world"}'
CONNECTIONS = 64
WARMUP = 500
LOAD_SECONDS = 10.0
SAMPLE_SECONDS = 5
SAMPLE_RATE = 250  # per second


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        pytest.skip("py-spy is not installed (pip install py-spy, or the dev extras)")
    return found


def _profile(pid: int, url: str, path: str, out: Path) -> tuple[Counter[str], float]:
    """Samples per part, and the process's CPU microseconds per request, under load."""
    port = int(url.rsplit(":", 1)[1])
    before = cpu_seconds(pid)
    job = LoadJob(LoadSpec(port, path, BODY, CONNECTIONS, warmup=WARMUP, duration=LOAD_SECONDS))
    # Sample once the load has reached the server (the load generator takes a moment to start).
    wait_until(lambda: cpu_seconds(pid) > before + 0.2, 60.0, "the load to reach the server")
    record = [_py_spy(), "record", "--pid", str(pid), "--rate", str(SAMPLE_RATE)]
    record += ["--duration", str(SAMPLE_SECONDS), "--format", "raw", "--output", str(out), "--nonblocking"]
    done = subprocess.run(record, capture_output=True, text=True, timeout=60)
    result = job.result()
    assert result.statuses == {200: result.count}, result.statuses
    if done.returncode != 0:
        pytest.skip(f"py-spy could not sample the server (ptrace not allowed?): {done.stderr.strip()[-300:]}")
    used = cpu_seconds(pid) - before
    samples = parse_raw(out.read_text().splitlines())
    return samples, used / (result.count + WARMUP) * 1e6


@pytest.mark.timeout(300)
def test_stress_child_cpu_by_part_ipc_vs_in_process(
    ipc: tuple[Server, str],
    ipc_batched: tuple[Server, str],
    ceiling: tuple[int, str],
    figures: Figures,
    tmp_path: Path,
) -> None:
    _py_spy()
    put_pid, batch_pid = ipc[0].process, ipc_batched[0].process
    assert put_pid is not None and batch_pid is not None and put_pid.pid and batch_pid.pid
    targets = {
        "in-process": (ceiling[0], ceiling[1], "/echo"),
        "put": (put_pid.pid, ipc[1], "/echo"),
        "batch": (batch_pid.pid, ipc_batched[1], "/echo-state"),
    }
    profiles = {name: _profile(pid, url, path, tmp_path / f"{name}.raw") for name, (pid, url, path) in targets.items()}

    header = ["part"] + [f"{name} {unit}" for name in targets for unit in ("share", "us/req")]
    rows = []
    for part in ORDER:
        row = [part]
        for samples, per_request in profiles.values():
            share = samples[part] / sum(samples.values())
            row += [f"{share:.1%}", f"{share * per_request:.0f}"]
        rows.append(row)
    totals = ["total (samples)"]
    for samples, per_request in profiles.values():
        totals += [str(sum(samples.values())), f"{per_request:.0f}"]
    rows.append(totals)
    figures.table(
        f"the HTTP child's CPU by part, POST /echo at {CONNECTIONS} connections (py-spy, {SAMPLE_RATE}/s for "
        f"{SAMPLE_SECONDS} s; us/req: the process's CPU over the load per request, split by share)",
        header,
        rows,
    )

    for name, (samples, per_request) in profiles.items():
        total = sum(samples.values())
        assert total >= SAMPLE_RATE, f"{name}: only {total} samples"
        assert per_request > 0
    inproc = profiles["in-process"][0]
    # The classifier's own check: the in-process server runs none of the IPC path.
    assert sum(inproc[part] for part in IPC_PARTS) / sum(inproc.values()) < 0.01, inproc
    for name in ("put", "batch"):
        samples = profiles[name][0]
        assert sum(samples[part] for part in IPC_PARTS) < samples["HTTP"], (name, samples)


def test_cpu_parts_charge_a_sample_to_the_innermost_frame_of_a_part() -> None:
    """Steps: classify sample stacks as py-spy writes them. Expect: the innermost frame of a
    known part decides; standard-library frames count for their caller; a stack of loop frames
    only (or none) is the event loop's; anything else is "other"."""
    app = "run_asgi (uvicorn/protocols/http/httptools_impl.py:409);__call__ (fastapi/applications.py:1)"
    raw = [
        f"{app};echo_ipc (stress/servers.py:90);submit (isolated_api/worker/channel.py:181) 3",
        f"{app};send (isolated_api/worker/pipe_link.py:1);dumps (isolated_api/shared/framing.py:95) 10",
        f"{app};render (starlette/responses.py:50);dumps (json/__init__.py:231) 2",
        f"{app};iterencode (json/encoder.py:258) 1",
        "run (asyncio/runners.py:118);send (uvicorn/protocols/http/httptools_impl.py:524) 4",
        "run (asyncio/runners.py:118) 5",
        " 6",
        "somewhere (mylib/thing.py:1) 7",
        f"{app};watch (isolated_api/worker/metrics_middleware.py:29) 8",
        f"{app};call (isolated_api/worker/dependencies.py:120) 9",
    ]
    assert parse_raw(raw) == Counter(
        {
            "IPC: channel, pipes": 3 + 9,
            "IPC: encode, decode": 10,
            "framework": 2 + 1,
            "HTTP": 4,
            "event loop": 5 + 6,
            "other": 7,
            "our middleware": 8,
        }
    )
