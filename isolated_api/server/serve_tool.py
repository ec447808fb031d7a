"""The ``serve`` command: starts the server and blocks until it stops.

appinfra turns SIGINT and SIGTERM into ``KeyboardInterrupt`` in the main thread; that is the
command's cue to stop the server gracefully and return 0 (a server asked to stop has done its job).
In subprocess mode the child is started, its URL logged, and the command blocks until a signal or
the server ends; direct mode runs uvicorn here (``server.start()``), which handles the signals.
"""

from __future__ import annotations

import re
from typing import Any

from appinfra.app.tools.base import Tool, ToolConfig

from isolated_api.server.server import Server

# How the "serving" line reads in appinfra's log format: scripts and tests find the URL with it.
SERVING_LINE = re.compile(r"serving\s.*url\[(?P<url>http://[^\]]+)\].*http_child_pid\[(?P<pid>\d+)\]")


class ServeTool(Tool):
    """An appinfra tool running ``server`` until the process is told to stop."""

    def __init__(self, server: Server, name: str, help_text: str, stop_timeout: float) -> None:
        super().__init__(config=ToolConfig(name=name, help_text=help_text, description=help_text))
        self._server = server
        self._stop_timeout = stop_timeout

    def run(self, **kwargs: Any) -> int:
        server = self._server
        if not server.is_subprocess_mode:
            self.lg.info("serving in this process", extra={"host": server.host, "port": server.config.port})
            server.start()
            return 0
        try:
            process = server.start_subprocess()
            url = f"http://{server.host}:{server.port}"
            self.lg.info("serving", extra={"url": url, "http_child_pid": process.pid})
            _wait_until_stopped(server)
            self.lg.info("the HTTP server stopped")
        except KeyboardInterrupt:
            self.lg.info("stopping the HTTP server", extra={"timeout": self._stop_timeout})
        finally:
            server.stop(self._stop_timeout)
        return 0


def _wait_until_stopped(server: Server) -> None:
    # The wait is a lock acquire, so a signal (turned into KeyboardInterrupt) interrupts it.
    server.wait()
