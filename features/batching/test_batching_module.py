"""``python -m <this package> --port 0 --api-key KEY`` as a user runs it: a process of its own,
found by the line it prints, driven by the real ``openai`` client, stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("openai", reason="these tests drive the server with the openai client: pip install openai")

import openai

from isolated_api.testing import wait_until

from .batching_clients import make_client
from .batching_models import fake_embedding

KEY = "sk-module-test"
# Wherever the slice was copied to: the package this test lives in, and the folder to run it from.
PACKAGE = __name__.rpartition(".")[0]
ROOT = Path(__file__).resolve().parents[PACKAGE.count(".") + 1]


class Output:
    """The process's output lines, read by a thread as they come (a wait on them has a deadline)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert process.stdout is not None
        self._stdout = process.stdout
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stdout:
            self.lines.append(line.rstrip("\n"))

    def close(self) -> None:
        self._thread.join(10)  # the process is gone: its output ends
        self._stdout.close()

    def find(self, prefix: str) -> str | None:
        return next((line for line in self.lines if line.startswith(prefix)), None)


@contextmanager
def module_server(*args: str) -> Iterator[tuple[subprocess.Popen[str], Output, str]]:
    command = [sys.executable, "-m", PACKAGE, "--port", "0", "--api-key", KEY, *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = Output(process)
    try:
        wait_until(
            lambda: output.find("serving on ") is not None or process.poll() is not None, 60, "the server's line"
        )
        line = output.find("serving on ")
        assert line is not None, "\n".join(output.lines)
        yield process, output, line.removeprefix("serving on ")
    finally:
        if process.poll() is None:
            process.kill()  # only if the test did not stop it itself
        process.wait(30)
        output.close()


def _port_open(url: str) -> bool:
    port = int(url.rsplit(":", 1)[1])
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_batching_module_serves_the_openai_client_and_stops_on_sigterm() -> None:
    """Steps: run the module with --port 0 and read the URL it prints; the openai client lists the
    models, embeds two strings, streams a chat answer and is refused with a wrong key; SIGTERM.
    Expect each answer as in-process, exit code 0 after "stopped", and the port closed."""
    with module_server("--workers", "2") as (process, output, url):
        with make_client(url, KEY) as client:
            assert sorted(m.id for m in client.models.list().data) == ["fake-chat", "fake-embed"]
            embedded = client.embeddings.create(model="fake-embed", input=["a b", "c"])
            assert [d.embedding for d in embedded.data] == [fake_embedding("a b"), fake_embedding("c")]
            chunks = list(
                client.chat.completions.create(
                    model="fake-chat", messages=[{"role": "user", "content": "streamed from a module"}], stream=True
                )
            )
            assert "".join(c.choices[0].delta.content or "" for c in chunks) == "streamed from a module"
            assert chunks[-1].choices[0].finish_reason == "stop"
        with make_client(url, "sk-wrong") as wrong, pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, "\n".join(output.lines)
        wait_until(lambda: output.find("stopped") is not None, 10, "the 'stopped' line")
        assert not _port_open(url)


def test_batching_module_needs_an_api_key() -> None:
    result = subprocess.run(
        [sys.executable, "-m", PACKAGE, "--port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "--api-key" in result.stderr
