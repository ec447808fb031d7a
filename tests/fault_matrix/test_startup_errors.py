"""Fault matrix, issue 16 item 7: start-up as a user meets it, each case a script of its own in an
empty directory, run with this environment's Python.

| condition                                | before                              | after                              |
|------------------------------------------|-------------------------------------|------------------------------------|
| port already in use                      | OSError traceback from socket code  | PortInUseError: host:port, the fix |
| no `if __name__ == "__main__":` (spawn,  | a traceback per worker (EADDRINUSE),| one UnguardedMainError naming the  |
|   2 workers, a log file)                 | then "see <log never created>"      | fix (workers exit quietly, code 78)|
| server started (logging at INFO)         | "N HTTP worker(s) serving on h:p"   | one line: URL, worker pids, log    |
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

_ROUTES = """
import json, sys
from isolated_api import ServerBuilder


async def ping() -> dict[str, bool]:
    return {"pong": True}


def build(port, log_file, workers):
    import multiprocessing
    request_q, response_q = multiprocessing.Queue(), multiprocessing.Queue()
    return (
        ServerBuilder("demo").with_host("127.0.0.1").with_port(port)
        .routes.with_route("/ping", ping).done()
        .uvicorn.with_workers(workers).done()
        .subprocess.with_ipc(request_q, response_q).with_log_file(log_file).done()
        .build()
    )
"""

_GUARDED = (
    _ROUTES
    + """
if __name__ == "__main__":
    import logging
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    server = build(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
    server.start_subprocess()
    print(json.dumps({"port": server.port, "pids": [p.pid for p in server.processes]}), flush=True)
    server.stop()
"""
)

# The mistake: the server is built and started at the script's top level.
_UNGUARDED = (
    _ROUTES
    + """
server = build(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
server.start_subprocess()
server.stop()
"""
)


def _run(tmp_path: Path, source: str, port: int, workers: int = 1) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "serve.py"
    script.write_text(textwrap.dedent(source))
    log_file = tmp_path / "api.log"
    return subprocess.run(
        [sys.executable, str(script), str(port), str(log_file), str(workers)],
        capture_output=True,
        cwd=tmp_path,
        text=True,
        timeout=120,
    )


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


def _one_traceback_ending_with(stderr: str, pattern: str) -> None:
    assert stderr.count("Traceback") == 1 and "During handling" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert re.fullmatch(pattern, last), last


def test_startup_errors_port_in_use_is_one_line_naming_it(tmp_path: Path) -> None:
    """Steps: another socket listens on a port; the script starts its server there. Expect exit
    code 1 and one traceback ending in PortInUseError: the host:port, that another process listens
    there, and with_port(0)."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = _run(tmp_path, _GUARDED, port)
    assert result.returncode == 1
    _one_traceback_ending_with(
        result.stderr,
        rf"isolated_api\.\S*PortInUseError: 127\.0\.0\.1:{port} is already in use: another process listens "
        r"there\. Stop it, or choose another port \(with_port\(0\) picks a free one\)",
    )


def test_startup_errors_script_without_main_guard_names_the_fix(tmp_path: Path) -> None:
    """Steps: a script that builds and starts a 2-worker server (with a log file) at its top
    level, run under spawn on a fixed port. Expect one traceback (the main process's), ending in
    UnguardedMainError that names `if __name__ == "__main__":`; no EADDRINUSE, no pointer to the
    log file; the workers exited before writing anything."""
    result = _run(tmp_path, _UNGUARDED, _free_port(), workers=2)
    assert result.returncode == 1
    _one_traceback_ending_with(
        result.stderr,
        r"isolated_api\.\S*UnguardedMainError: the HTTP workers could not start because the main script starts "
        r'the server when it is imported: under the "spawn" start method .* `if __name__ == "__main__":`',
    )
    assert "in use" not in result.stderr and "api.log" not in result.stderr
    assert not (tmp_path / "api.log").exists()


def test_startup_errors_start_is_announced_in_one_line(tmp_path: Path) -> None:
    """Steps: a correct script with 2 workers and a log file, logging at INFO. Expect one line
    from the library on stderr: the URL, both worker pids and the log file."""
    result = _run(tmp_path, _GUARDED, 0, workers=2)
    assert result.returncode == 0, result.stderr
    started = json.loads(result.stdout)
    pids = ", ".join(str(pid) for pid in started["pids"])
    line = (
        f"INFO isolated_api.server: demo: serving on http://127.0.0.1:{started['port']} "
        f"(HTTP worker pids {pids}; their output: {tmp_path / 'api.log'})"
    )
    assert result.stderr.splitlines() == [line], result.stderr
