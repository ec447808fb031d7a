"""Fault matrix, issue 16 item 4: SIGTERM and a second Ctrl-C reach the main process of the
README's loop (``start_subprocess()``, ``while ...: request_q.get()``, ``except KeyboardInterrupt``,
``finally: server.stop()``), run as a script of its own.

| condition                                   | before                        | after                              |
|---------------------------------------------|-------------------------------|------------------------------------|
| SIGTERM to the main process, 50 in flight   | 50/50 dropped; killed (-15)   | ready 503, 50/50 200, exit 0       |
| second Ctrl-C during stop()                 | KeyboardInterrupt traceback   | logged and ignored; exit 0         |
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

from isolated_api.testing import wait_until
from tests.fault_matrix.scripts import script_process

IN_FLIGHT = 50

_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys, uuid
    from dataclasses import dataclass

    from isolated_api import IPC, ServerBuilder


    @dataclass
    class Job:
        id: str


    @dataclass
    class Reply:
        id: str


    async def work(channel: IPC) -> dict[str, bool]:
        await channel.submit(Job(uuid.uuid4().hex))
        return {"done": True}


    async def ping() -> dict[str, bool]:
        return {"pong": True}


    if __name__ == "__main__":
        hold = int(sys.argv[1])
        request_q, response_q = multiprocessing.Queue(), multiprocessing.Queue()
        builder = (
            ServerBuilder("term").with_host("127.0.0.1").with_port(0)
            .routes.with_route("/work", work).with_route("/ping", ping).done()
            .subprocess.with_ipc(request_q, response_q).done()
        )
        if len(sys.argv) > 3:
            builder.with_drain_timeout(float(sys.argv[3]))
        server = builder.build()
        server.start_subprocess()
        print(server.port, flush=True)
        held = []
        try:
            while (job := request_q.get()) is not None:
                held.append(job)
                if len(held) == hold:
                    print("holding", flush=True)
                    sys.stdin.readline()  # the test says when to answer
                    for job in held:
                        response_q.put(Reply(job.id))
                    held.clear()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        finally:
            server.stop(timeout=float(sys.argv[2]))
        print("stopped", flush=True)
    """
)


@contextmanager
def _main_process(
    tmp_path: Path, hold: int, stop_timeout: float, *drain_timeout: float
) -> Iterator[subprocess.Popen[str]]:
    with script_process(tmp_path, _SCRIPT, str(hold), str(stop_timeout), *map(str, drain_timeout)) as main:
        yield main


def _get(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=30).status_code
    except httpx.HTTPError:
        return None


def _pending(url: str) -> int:
    return int(httpx.get(f"{url}/health/live", timeout=10).json()["pending"])


def test_sigterm_to_the_main_process_finishes_in_flight_requests_and_exits_0(tmp_path: Path) -> None:
    """Steps: the README's loop as a script; 50 requests it holds; SIGTERM to its main process
    alone (what Kubernetes sends); readiness asked; then the loop answers the 50. Expect
    readiness 503 while they are in flight, all 50 answered 200, then KeyboardInterrupt in the
    loop, stop(), and exit code 0 with no traceback."""
    with _main_process(tmp_path, IN_FLIGHT, 5.0) as main, ThreadPoolExecutor(IN_FLIGHT) as pool:
        assert main.stdout is not None and main.stdin is not None
        url = f"http://127.0.0.1:{int(main.stdout.readline())}"
        in_flight = [pool.submit(_get, f"{url}/work") for _ in range(IN_FLIGHT)]
        assert main.stdout.readline().strip() == "holding"
        os.kill(main.pid, signal.SIGTERM)
        wait_until(lambda: _get(f"{url}/health/ready") == 503, 10, "readiness to turn 503")
        main.stdin.write("answer\n")
        main.stdin.flush()
        assert [f.result(30) for f in in_flight] == [200] * IN_FLIGHT
        out, err = main.communicate(timeout=30)
        assert out.split() == ["interrupted", "stopped"], (out, err)
        assert main.returncode == 0, err
        assert "Traceback" not in err and "SIGTERM: stopping gracefully" in err, err


def test_sigterm_a_second_ctrl_c_during_stop_is_ignored(tmp_path: Path) -> None:
    """Steps: one request the loop holds; SIGINT to the main process (the loop ends with
    KeyboardInterrupt, stop(timeout=3) drains); once the drain shows (/ping 503), SIGINT again.
    Expect stop() to finish (the held request ends 503 when the drain times out), "stopped"
    printed, exit code 0 and no traceback."""
    with _main_process(tmp_path, 2, 3.0) as main, ThreadPoolExecutor(1) as pool:
        assert main.stdout is not None
        url = f"http://127.0.0.1:{int(main.stdout.readline())}"
        held = pool.submit(_get, f"{url}/work")
        wait_until(lambda: _pending(url) == 1, 10, "the request to reach the main process")
        os.kill(main.pid, signal.SIGINT)
        wait_until(lambda: _get(f"{url}/ping") == 503, 10, "stop() to drain")
        os.kill(main.pid, signal.SIGINT)
        assert held.result(30) == 503
        out, err = main.communicate(timeout=30)
        assert out.split() == ["interrupted", "stopped"], (out, err)
        assert main.returncode == 0, err
        assert "Traceback" not in err and "already stopping" in err, err


def test_sigterm_drains_for_the_configured_drain_timeout(tmp_path: Path) -> None:
    """Steps: the script built with .with_drain_timeout(1); one request the loop never answers;
    SIGTERM to the main process. Expect the held request to end 503 once the 1 s drain is over,
    well before the default 10 s would have let it (8 s at most here), and the process to end as
    usual: KeyboardInterrupt in the loop, stop(), exit 0."""
    with _main_process(tmp_path, 2, 5.0, 1.0) as main, ThreadPoolExecutor(1) as pool:
        assert main.stdout is not None
        url = f"http://127.0.0.1:{int(main.stdout.readline())}"
        held = pool.submit(_get, f"{url}/work")
        wait_until(lambda: _pending(url) == 1, 10, "the request to reach the main process")
        os.kill(main.pid, signal.SIGTERM)
        assert held.result(8) == 503
        out, err = main.communicate(timeout=30)
        assert out.split() == ["interrupted", "stopped"], (out, err)
        assert main.returncode == 0, err
        assert "Traceback" not in err, err
