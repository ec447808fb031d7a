"""examples/engine_companion.py and examples/cli_app.py run for real, as a user would, from the
repository root: real child processes, real HTTP on 127.0.0.1 (port 0), real signals."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from isolated_api.server.serve_tool import SERVING_LINE as SERVING
from isolated_api.testing import pid_alive, wait_until
from tests.cli_process import CliProcess

ROOT = Path(__file__).resolve().parent.parent


def test_examples_engine_companion_serves_unary_errors_and_streams() -> None:
    """Steps: run engine_companion.py --smoke. Expect the engine's upper-cased reply, its
    EngineError as a 422 with its message, the streamed numbers, then a clean exit."""
    done = subprocess.run(
        [sys.executable, "examples/engine_companion.py", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert 'POST /shout {"text": "hello"} -> 200 {"text":"HELLO"}' in lines
    assert 'POST /shout {"text": ""} -> 422 {"detail":"text must not be empty"}' in lines
    assert 'POST /count {"n": 3} -> 200 {"numbers":[0,1,2]}' in lines
    assert lines[-1] == "stopped"


@pytest.mark.parametrize(("signum", "whole_group"), [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_examples_cli_app_serve_answers_then_stops_on_a_signal(signum: signal.Signals, whole_group: bool) -> None:
    """Steps: `python examples/cli_app.py serve` with PORT=0; wait for its "serving" line; POST
    /shout; then Ctrl-C to the process group, or SIGTERM to the CLI alone. Expect the engine's
    answer through the HTTP child, exit code 0 without a traceback, and the child gone."""
    with CliProcess(["examples/cli_app.py", "serve"], env={"PORT": "0"}) as cli:
        serving = cli.wait_for(SERVING)
        url, child_pid = serving["url"], int(serving["pid"])
        response = httpx.post(f"{url}/shout", json={"text": "from the cli"}, timeout=10)
        assert (response.status_code, response.json()) == (200, {"text": "FROM THE CLI"})
        cli.send(signum, whole_group)
        assert cli.wait() == 0, cli.output
        assert "Traceback" not in cli.output, cli.output
        wait_until(lambda: not pid_alive(child_pid), 5.0, "the HTTP child to exit")
