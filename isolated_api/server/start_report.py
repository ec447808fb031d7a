"""The one line the main process writes when the server is up: where it serves, which processes
serve it, and where their output goes."""

from __future__ import annotations

import logging

from isolated_api.shared.spec import ServerSpec

logger = logging.getLogger("isolated_api.server")


def start_line(spec: ServerSpec, port: int, pids: list[int | None]) -> str:
    api = spec.api
    scheme = "https" if api.uvicorn.ssl_enabled else "http"
    host = f"[{api.host}]" if ":" in api.host else api.host
    output = api.log_file if api.log_file is not None else "this process's stdout/stderr"
    return (
        f"{spec.name}: serving on {scheme}://{host}:{port} "
        f"(HTTP worker pid{'s' if len(pids) > 1 else ''} {', '.join(str(p) for p in pids)}; "
        f"their output: {output})"
    )


def announce_start(spec: ServerSpec, port: int, pids: list[int | None]) -> None:
    """INFO on the ``isolated_api.server`` logger. Through logging only, never straight to
    stderr: the main process's output is the application's (``logging.basicConfig(level=
    logging.INFO)`` shows the line)."""
    logger.info("%s", start_line(spec, port, pids))
