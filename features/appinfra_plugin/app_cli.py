"""Runs the slice's CLI app as a user would, for its tests: a real process in its own session (so a
test can send Ctrl-C to the whole group, as a terminal does) started from the directory that holds
the slice's top-level package, its output read line by line by a thread, and waits on lines with deadlines."""

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

# The slice runs under any folder name and parent package: `python -m <its package>.serve_app` runs
# from the directory its import name is relative to (this repository's root for features.appinfra_plugin,
# the project's root for a copy such as myapp.serving), one level up per dot in the name.
ROOT = Path(__file__).resolve().parents[__name__.count(".")]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class AppCli:
    """``with AppCli([...]) as cli:`` runs ``python <argv>``; on exit it kills the process group if
    it is still there (a failing test must not leave it behind)."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self._process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
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
    def output(self) -> str:
        return "\n".join(self.lines)

    def _read(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        for line in stdout:
            # appinfra colours its log lines: matched without the escape codes.
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
        """Waits for the exit and returns its code once every output line is read."""
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the CLI did not exit within {timeout} s:\n{self.output}") from None
        self._pump.join(timeout)
        try:
            while (line := self._queue.get_nowait()) is not None:
                self.lines.append(line)
        except queue.Empty:  # the reader is still on: something the CLI started holds its output open
            pass
        return code

    def __enter__(self) -> AppCli:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait(10)
        self._pump.join(10)
        if self._process.stdout is not None:
            self._process.stdout.close()
