"""ServerPlugin for appinfra's ``AppBuilder``::

    app = AppBuilder("myapp").tools.with_plugin(ServerPlugin(server)).done().build()
    sys.exit(app.main())          # myapp serve  -> runs the server until SIGINT / SIGTERM

This module needs appinfra; ``isolated_api`` imports it only when ``ServerPlugin`` is asked for.
"""

from __future__ import annotations

try:
    from appinfra.app.builder.app import AppBuilder
    from appinfra.app.builder.plugin import Plugin
    from appinfra.app.core.app import App
except ImportError as exc:  # pragma: no cover - exercised by a test in a process without appinfra
    raise ImportError(
        "ServerPlugin needs the appinfra package: pip install 'isolated_api[appinfra]'", name=exc.name
    ) from exc

from isolated_api.server.serve_tool import ServeTool
from isolated_api.server.server import Server


class ServerPlugin(Plugin):
    """Adds a ``tool_name`` command that runs ``server`` (blocking; in subprocess mode it starts
    the HTTP child and waits), and stops the server when the app shuts down, whichever command
    ran and however it ended. ``stop_timeout`` is ``server.stop``'s drain time; keep it under
    appinfra's plugin shutdown budget (10 s by default)."""

    def __init__(
        self,
        server: Server,
        tool_name: str = "serve",
        tool_help: str = "Start the HTTP server",
        *,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(f"ServerPlugin[{tool_name}]")
        self.server = server
        self.tool = ServeTool(server, tool_name, tool_help, stop_timeout)
        self._stop_timeout = stop_timeout

    def configure(self, builder: AppBuilder) -> None:
        builder.tools.with_tool(self.tool).done()

    def cleanup(self, application: App) -> None:
        self.server.stop(self._stop_timeout)
