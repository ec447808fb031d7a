"""Each example in examples/ run for real, as a user would: ``python examples/NAME.py --smoke`` from
the repository root, with real child processes and real HTTP on 127.0.0.1 (port 0)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from isolated_api.testing import pid_alive, wait_until
from tests.cli_process import CliProcess

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


def test_examples_remote_engine_answers_from_an_engine_host_in_another_process() -> None:
    output = _run("remote_engine", "--smoke")
    assert _line(output, "POST /generate -> ") == 'POST /generate -> 200 {"text":"olleh"}'
    assert _line(output, "engine host serving ").startswith("engine host serving tcp://127.0.0.1:")
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


# --- The README demo (examples/demo.py). DemoProcess is also used by test_demo_browser and test_demo_schema.

DEMO_PROMPT = "tokens these watch and demo the to welcome"  # the demo's sample prompt
DEMO_TEXT = "welcome to the demo and watch these tokens"  # what its engine makes of it: the words reversed


class DemoProcess(CliProcess):
    """``python examples/demo.py --port 0 ARGS`` as a user would run it, in its own process group
    (so SIGINT reaches both processes, as Ctrl-C in a terminal does). Entered, it waits until the
    demo serves; then ``url``, ``child_pid``, ``lines`` (what it printed so far)."""

    def __init__(self, *args: str) -> None:
        super().__init__([str(ROOT / "examples" / "demo.py"), "--port", "0", *args])
        self.url = ""
        self.child_pid = 0

    def wait_ready(self, timeout: float = DEADLINE) -> DemoProcess:
        """Waits for "Ctrl-C to stop", printed once the HTTP child accepts connections."""
        self.wait_for(re.compile(r"^Ctrl-C to stop$"), timeout)
        serving = re.search(r"^HTTP child (\d+) serving (http://127\.0\.0\.1:\d+) ", self.output, re.MULTILINE)
        assert serving is not None, self.output
        self.child_pid, self.url = int(serving[1]), serving[2]
        return self

    def wait_for_line(self, pattern: str, timeout: float = DEADLINE) -> re.Match[str]:
        """Waits for a printed line matching ``pattern`` (from the start of the line)."""
        return self.wait_for(re.compile(f"^(?:{pattern})"), timeout)

    def interrupt(self, timeout: float = DEADLINE) -> int:
        """Ctrl-C as a terminal sends it (to the whole group); returns the exit code, all output read."""
        self.send(signal.SIGINT, whole_group=True)
        return self.wait(timeout)

    def __enter__(self) -> DemoProcess:
        try:
            return self.wait_ready()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.interrupt()
        self.close()


def _sse_data(body: str) -> list[object]:
    """The decoded ``data:`` fields of an SSE body, in order."""
    return [json.loads(line[len("data: ") :]) for line in body.splitlines() if line.startswith("data: ")]


def _expected_tokens(text: str) -> list[object]:
    words = text.split()
    texts = [word if index == 0 else f" {word}" for index, word in enumerate(words)]
    return [{"index": i, "text": t, "final": i == len(words) - 1} for i, t in enumerate(texts)]


def test_examples_demo_smoke_generates_whole_and_streamed_text_in_the_main_process() -> None:
    """Steps: run demo.py --port 0 --smoke. Expect POST /v1/generate answered 200 with the engine's
    text by the main process (not the HTTP child), POST /v1/generate/stream answered 200 with one
    frame per token, in order, the last one final; then a clean exit."""
    output = _run("demo", "--port", "0", "--smoke", "--token-delay", "0")
    pids = re.search(r"^HTTP child (\d+) serving .*; main process (\d+)$", output, re.MULTILINE)
    assert pids is not None, output
    child_pid, main_pid = int(pids[1]), int(pids[2])
    assert child_pid != main_pid
    assert _reply(output, "POST /v1/generate ") == (200, {"text": DEMO_TEXT, "tokens": 8, "main_pid": main_pid})
    assert _reply(output, "POST /v1/generate/stream") == (200, _expected_tokens(DEMO_TEXT))
    assert output.rstrip().endswith("stopped")


def test_examples_demo_curl_commands_work_and_ctrl_c_stops_cleanly() -> None:
    """Steps: start demo.py --port 0 in its own process group, wait for its URL, send what each curl
    command it printed sends (plus a body FastAPI must refuse), then Ctrl-C the group as a terminal
    would. Expect the whole text, the token stream, 422 for the bad body, exit code 0, "stopped",
    and the HTTP child gone."""
    with DemoProcess("--token-delay", "0.01") as demo:
        curls = [re.search(r"curl -sN? -X POST (\S+) -H '([^']+)' -d '(.+)'$", line) for line in demo.lines]
        commands = [(c[1], c[3]) for c in curls if c is not None]
        assert [url for url, _ in commands] == [f"{demo.url}/v1/generate", f"{demo.url}/v1/generate/stream"]
        headers = {"content-type": "application/json"}
        with httpx.Client(timeout=10, trust_env=False) as client:
            whole = client.post(commands[0][0], content=commands[0][1], headers=headers)
            assert whole.status_code == 200, whole.text
            assert whole.json() == {"text": DEMO_TEXT, "tokens": 8, "main_pid": demo.process.pid}
            streamed = client.post(commands[1][0], content=commands[1][1], headers=headers)
            assert streamed.status_code == 200, streamed.text
            assert streamed.headers["content-type"].startswith("text/event-stream")
            assert _sse_data(streamed.text) == _expected_tokens(DEMO_TEXT)
            refused = client.post(commands[1][0], json={"prompt": "x", "max_tokens": 0})
            assert refused.status_code == 422, refused.text
            page = client.get(f"{demo.url}/")
            assert page.status_code == 200
            assert "/v1/generate/stream" in page.text

        assert demo.interrupt() == 0, demo.output
        assert demo.lines[-1] == "stopped", demo.output
        wait_until(lambda: not pid_alive(demo.child_pid), 5.0, "the HTTP child to exit")


def test_examples_demo_client_leaving_mid_stream_stops_the_generation() -> None:
    """Steps: start demo.py with 0.2 s between tokens; stream a 40-word prompt, read the first token
    and hang up. Expect the main process to stop generating that request well before its 40th token
    (it prints "cancelled after N of 40 tokens")."""
    with DemoProcess("--token-delay", "0.2") as demo:
        with httpx.Client(timeout=10, trust_env=False) as client:
            body = {"prompt": " ".join(f"w{i}" for i in range(40))}
            with client.stream("POST", f"{demo.url}/v1/generate/stream", json=body) as response:
                assert response.status_code == 200
                first = next(line for line in response.iter_lines() if line.startswith("data: "))
                assert json.loads(first[len("data: ") :]) == {"index": 0, "text": "w39", "final": False}
        cancelled = demo.wait_for_line(r"main: request \w+ cancelled after (\d+) of 40 tokens$", timeout=20)
        assert int(cancelled[1]) < 40


def test_examples_demo_sigterm_stops_as_cleanly_as_ctrl_c() -> None:
    """Steps: start demo.py, then SIGTERM its main process only (as `kill` or a process manager
    does). Expect exit code 0, "stopped" printed after server.stop(), and the HTTP child gone."""
    with DemoProcess() as demo:
        demo.send(signal.SIGTERM)
        assert demo.wait(DEADLINE) == 0, demo.output
        assert demo.lines[-2:] == ["stopping", "stopped"], demo.output
        wait_until(lambda: not pid_alive(demo.child_pid), 5.0, "the HTTP child to exit")
