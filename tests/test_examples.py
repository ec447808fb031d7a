"""Each example in examples/ run for real, as a user would: ``python examples/NAME.py --smoke`` from
the repository root, with real child processes and real HTTP on 127.0.0.1 (port 0)."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.helpers import pid_alive, wait_until

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 60.0


def _run(name: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Runs an example to completion; returns its stdout once it exited 0 by itself in time."""
    completed = subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{name}.py"), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert completed.returncode == 0, f"{name} exited {completed.returncode}\n{completed.stdout}\n{completed.stderr}"
    return completed.stdout


def _line(output: str, prefix: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"expected one line starting {prefix!r} in:\n{output}"
    return lines[0]


def _reply(output: str, prefix: str) -> tuple[int, object]:
    """``PREFIX -> STATUS JSON`` printed by an example: the status and the decoded body."""
    status, _, body = _line(output, prefix).split(" -> ", 1)[1].partition(" ")
    return int(status), json.loads(body)


def test_examples_direct_mode_serves_in_this_process() -> None:
    """Steps: run direct_mode.py --smoke. Expect its GET /hello answered 200, then a clean exit."""
    output = _run("direct_mode", "--smoke")
    assert _reply(output, "GET /hello") == (200, {"message": "hello direct"})
    assert output.rstrip().endswith("stopped")


def test_examples_subprocess_mode_replies_from_main_and_logs_to_file(tmp_path: Path) -> None:
    """Steps: run subprocess_mode.py --smoke with HTTP_CHILD_LOG in tmp_path. Expect the main
    process's upper-cased reply, and the child's uvicorn output in the log file, not on stdout."""
    log_file = tmp_path / "child.log"
    output = _run("subprocess_mode", "--smoke", env={"HTTP_CHILD_LOG": str(log_file)})
    assert _reply(output, "POST /shout") == (200, {"text": "HELLO"})
    child_pid = int(_line(output, "HTTP child ").split()[2])
    log = log_file.read_text()
    assert f"[{child_pid}] uvicorn.error: Application startup complete." in log
    assert "Application startup complete" not in output
    assert output.rstrip().endswith("stopped")


def test_examples_channel_handlers_reach_main_both_ways_and_error_reply_sets_status() -> None:
    """Steps: run channel_handlers.py --smoke. Expect 200 through app.state and through the IPC
    dependency, and the main process's ErrorReply(409) seen by the client as 409 with its message."""
    output = _run("channel_handlers", "--smoke")
    assert _reply(output, 'POST /state {"text": "abc"}') == (200, {"text": "cba"})
    assert _reply(output, 'POST /dependency {"text": "xyz"}') == (200, {"text": "zyx"})
    assert _reply(output, 'POST /dependency {"text": "nope"') == (409, {"detail": "refusing 'nope'"})


def test_examples_stop_drains_in_flight_then_refuses_and_is_idempotent() -> None:
    """Steps: run stop.py --smoke. Expect 200 before stop, 503 for a new request during the drain,
    200 for the request in flight when stop() began, refused connections after, a harmless 2nd stop."""
    output = _run("stop", "--smoke")
    assert _reply(output, "before stop: GET /ping") == (200, {"pong": True})
    assert _reply(output, "during stop: GET /ping") == (503, {"detail": "the server is shutting down"})
    assert _reply(output, "in flight: POST /work") == (200, {"text": "finished during the drain"})
    assert re.search(r"^after stop: is_running=False, GET /ping -> refused", output, re.MULTILINE), output
    assert output.rstrip().endswith("second stop(): no-op")


def test_examples_demo_smoke_gets_the_work_done_by_the_main_process() -> None:
    """Steps: run demo.py --port 0 --smoke. Expect its POST /work answered 200 by the main process
    (word count, upper-case, main pid) while a different process serves HTTP."""
    output = _run("demo", "--port", "0", "--smoke")
    pids = re.search(r"^HTTP child (\d+) serving .*; main process (\d+)$", output, re.MULTILINE)
    assert pids is not None, output
    child_pid, main_pid = int(pids[1]), int(pids[2])
    assert child_pid != main_pid
    status, body = _reply(output, "POST /work")
    assert (status, body) == (200, {"words": 3, "upper": "HELLO ISOLATED WORLD", "main_pid": main_pid})
    assert output.rstrip().endswith("stopped")


def test_examples_demo_curl_command_works_and_ctrl_c_stops_cleanly() -> None:
    """Steps: start demo.py --port 0 in its own process group, wait for its URL, POST the body of
    the curl command it printed, then Ctrl-C the group as a terminal would. Expect the reply, exit
    code 0, "stopped", and the HTTP child gone."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    seen: list[str] = []

    def next_line(deadline: float) -> str:
        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        assert line is not None, "demo exited early:\n" + "\n".join(seen)
        seen.append(line)
        return line

    try:
        deadline = time.monotonic() + DEADLINE
        while not (seen and seen[-1] == "Ctrl-C to stop"):
            next_line(deadline)
        child_pid = int(_line("\n".join(seen), "HTTP child ").split()[2])
        curl = re.search(r"curl -s -X POST (\S+) -H 'content-type: application/json' -d '(.+)'$", seen[-2])
        assert curl is not None, seen
        response = httpx.post(curl[1], content=curl[2], headers={"content-type": "application/json"}, timeout=10)
        assert response.status_code == 200
        assert response.json() == {"words": 2, "upper": "HELLO WORLD", "main_pid": process.pid}

        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=DEADLINE) == 0, "\n".join(seen)
        while (line := lines.get(timeout=DEADLINE)) is not None:
            seen.append(line)
        assert seen[-1] == "stopped", seen
        wait_until(lambda: not pid_alive(child_pid), 5.0, "the HTTP child to exit")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        pumper.join(10)
        assert process.stdout is not None
        process.stdout.close()
