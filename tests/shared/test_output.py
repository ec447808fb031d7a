"""redirect_output and configure_logging, run in bare child processes so pytest's own descriptors
and logging are never touched (moved from features/log_isolation, which checks the same end to end
through a server's ``.subprocess.with_log_file(path)``)."""

from __future__ import annotations

import json
import multiprocessing
import uuid
from pathlib import Path
from typing import Any

import pytest
from uvicorn.config import LOGGING_CONFIG

from tests.shared.output_targets import CHANNELS, configure_then_log, emit_everywhere, redirect_then_emit


def _marker() -> str:
    return f"mark{uuid.uuid4().hex[:12]}"


def _run_child(target: Any, *args: Any) -> int:
    """Runs ``target(*args)`` in a spawned child; returns the child's pid once it exited with 0."""
    process = multiprocessing.get_context("spawn").Process(target=target, args=args)
    process.start()
    process.join(30)
    if process.is_alive():
        process.kill()
        process.join()
        raise AssertionError(f"{target.__name__} did not finish within 30 s")
    assert process.exitcode == 0, f"{target.__name__} exited with {process.exitcode}"
    assert process.pid is not None
    return process.pid


def test_output_redirect_output_takes_over_fds_1_and_2(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Steps: a bare child runs redirect_output(path) on a file that already has a line, then
    writes through every channel; a control child writes the same way without redirecting.
    Expect the first child's markers appended after the old line and absent from the fds it
    inherited (captured here); the control's markers present there, so a leak would be seen."""
    log_file = tmp_path / "out.log"
    log_file.write_text("an earlier line\n")
    marker, control = _marker(), _marker()

    _run_child(redirect_then_emit, str(log_file), marker)
    _run_child(emit_everywhere, control)
    inherited = capfd.readouterr()

    log = log_file.read_text()
    assert log.startswith("an earlier line\n")
    for channel in CHANNELS:
        assert f"{marker}-{channel}" in log, f"{channel} output missing from the file:\n{log}"
        assert f"{marker}-{channel}" not in inherited.out + inherited.err
    for channel in ("print", "fd1", "libc-write", "libc-puts"):
        assert f"{control}-{channel}" in inherited.out
    for channel in ("logging", "fd2"):
        assert f"{control}-{channel}" in inherited.err
    assert control not in log


@pytest.mark.parametrize("log_level", ["info", "TRACE"])
def test_output_configure_logging_writes_plain_stamped_lines(tmp_path: Path, log_level: str) -> None:
    """Steps: a bare child redirects to a file, configures logging for a file at ``log_level``
    and logs on the root, uvicorn and access loggers. Expect plain lines (no colours) carrying
    level, pid and logger name; debug lines only at trace level, whatever its case."""
    log_file, config_file, marker = tmp_path / "out.log", tmp_path / "config.json", _marker()
    pid = _run_child(configure_then_log, str(log_file), marker, log_level, True, str(config_file))

    log = log_file.read_text()
    lines = {line.split(" ", 2)[-1] for line in log.splitlines()}  # without the timestamp
    pid_stamp = f"[{pid}]"
    assert f"WARNING {pid_stamp} x: {marker}-root-warning" in lines
    assert f"WARNING {pid_stamp} uvicorn.error: {marker}-uvicorn-warning" in lines
    assert f'WARNING {pid_stamp} 127.0.0.1:1 - "GET /{marker} HTTP/1.1" 200 OK' in lines
    assert (f"DEBUG {pid_stamp} x: {marker}-root-debug" in lines) == (log_level.lower() == "trace")
    assert "\x1b[" not in log


def test_output_configure_logging_keeps_uvicorn_formats_for_a_terminal(tmp_path: Path) -> None:
    log_file, config_file, marker = tmp_path / "out.log", tmp_path / "config.json", _marker()
    _run_child(configure_then_log, str(log_file), marker, "warning", False, str(config_file))
    assert json.loads(config_file.read_text()) == LOGGING_CONFIG["formatters"]
    assert f"WARNING:  {marker}-uvicorn-warning" in log_file.read_text()
