"""Runs a command as a user would, for tests: a real process in its own session (so a test can
send Ctrl-C to the whole group, as a terminal does), its output read line by line by a thread,
and waits on lines with deadlines. Used for the appinfra CLI, the engine examples and the demo."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class CliProcess:
    """``with CliProcess([...]) as cli:`` starts the command from the repository root; on exit it
    kills the process if it is still there (a failing test must not leave it behind)."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self._process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            # A process that fails to exit in time is sent SIGABRT, on which faulthandler prints
            # every thread's stack: the failure then says where it hung.
            env={**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def process(self) -> subprocess.Popen[str]:
        return self._process

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def _read(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None, "the process was started without stdout=PIPE"
        for line in stdout:
            self._queue.put(_ANSI.sub("", line.rstrip("\n")))
        self._queue.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 30.0) -> re.Match[str]:
        """The first output line (from now on) matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"the CLI exited before printing {pattern.pattern!r}:\n{self.output}")
            self.lines.append(line)
            found = pattern.search(line)
            if found:
                return found
        raise AssertionError(f"no line matching {pattern.pattern!r} within {timeout} s:\n{self.output}")

    def send(self, signum: signal.Signals, whole_group: bool = False) -> None:
        if whole_group:
            os.killpg(self._process.pid, signum)
        else:
            self._process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        """Waits for the exit; returns the exit code once every output line is read. If it does
        not exit in time, fails with every thread's stack of the group's Python processes."""
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGABRT)
            try:
                self._process.wait(10)
            finally:
                self._pump.join(10)
                self._drain_output()
            raise AssertionError(
                f"{self._process.args!r} did not exit within {timeout} s; its output, with the stacks "
                f"faulthandler printed on SIGABRT:\n{self.output}"
            ) from None
        self._pump.join(timeout)
        self._drain_output()
        return code

    def _drain_output(self) -> None:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is None:
                return
            self.lines.append(line)

    def __enter__(self) -> CliProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Kills what is still running of the group this test started, and reaps it."""
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait(10)
        self._pump.join(10)
        if self._process.stdout is not None:
            self._process.stdout.close()
