"""ServerPlugin on the real appinfra package: the command it adds, the app's shutdown stopping the
server, and the CLI run as a user would (real processes, real HTTP on 127.0.0.1, real signals)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from typing import Any

import httpx
import pytest

pytest.importorskip("appinfra", reason="this slice needs appinfra: pip install 'isolated_api[appinfra]'")

from appinfra.app import AppBuilder

from isolated_api import ServerPlugin
from isolated_api.testing import loopback_builder, pid_alive, wait_until

from . import serve_app
from .app_cli import AppCli
from .serve_app import ping

# The app by the name it was imported under (features.appinfra_plugin.serve_app here, the copy's own
# name in a user's project); AppCli runs it from the directory that name is relative to.
APP = ["-m", serve_app.__name__]
# The `serve` command's log line once the HTTP child is up, in appinfra's log format: with port 0
# it is where the URL is learnt (and the child's pid, which /ping must answer with).
SERVING = re.compile(r"serving\s.*url\[(?P<url>http://[^\]]+)\].*http_child_pid\[(?P<pid>\d+)\]")


def _server(queues: tuple[Any, Any]) -> Any:
    return (
        loopback_builder("plugin").routes.with_route("/ping", ping).done().subprocess.with_ipc(*queues).done().build()
    )


def test_appinfra_plugin_adds_the_named_command_with_its_help(queues: tuple[Any, Any]) -> None:
    server = _server(queues)
    app = (
        AppBuilder("cli")
        .tools.with_plugin(ServerPlugin(server))
        .with_plugin(ServerPlugin(server, tool_name="api", tool_help="Run the API"))
        .done()
        .build()
    )
    serve, api = app.registry.get_tool("serve"), app.registry.get_tool("api")
    assert serve is not None and serve.config.help_text == "Start the HTTP server"
    assert api is not None and api.config.help_text == "Run the API"


def test_appinfra_plugin_cleanup_stops_a_running_server(queues: tuple[Any, Any]) -> None:
    """Steps: start the server, then run the plugin's shutdown step as appinfra's lifecycle does.
    Expect the child gone and the port refusing connections; a second cleanup is harmless."""
    server = _server(queues)
    plugin = ServerPlugin(server, stop_timeout=2.0)
    app = AppBuilder("cli").tools.with_plugin(plugin).done().build()
    process = server.start_subprocess()
    url = f"http://127.0.0.1:{server.port}"
    try:
        assert httpx.get(f"{url}/ping", timeout=10).json()["pong"] is True
        plugin.cleanup(app)
        assert not server.is_running and not pid_alive(process.pid or 0)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/ping", timeout=2)
        plugin.cleanup(app)
    finally:
        server.stop(timeout=1.0)


@pytest.mark.parametrize(("signum", "whole_group"), [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_appinfra_plugin_serve_runs_until_signalled_then_exits_cleanly(
    signum: signal.Signals, whole_group: bool
) -> None:
    """Steps: `serve_app serve` on a free port; wait for its "serving" line; GET /ping; then SIGTERM
    to the CLI process (as a service manager does) or SIGINT to its process group (Ctrl-C).
    Expect the answer from the HTTP child, exit code 0 without a traceback, and the child gone."""
    with AppCli([*APP, "serve"], env={"SERVE_APP_PORT": "0"}) as cli:
        serving = cli.wait_for(SERVING)
        url, child_pid = serving["url"], int(serving["pid"])
        answer = httpx.get(f"{url}/ping", timeout=10).json()
        assert answer == {"pong": True, "pid": child_pid} and child_pid != cli.pid
        cli.send(signum, whole_group)
        assert cli.wait() == 0, cli.output
        assert "stopping the HTTP server" in cli.output and "Traceback" not in cli.output
        wait_until(lambda: not pid_alive(child_pid), 5.0, "the HTTP child to exit")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/ping", timeout=2)


def test_appinfra_plugin_other_commands_never_start_the_server() -> None:
    with AppCli([*APP, "hello"], env={"SERVE_APP_PORT": "0"}) as cli:
        cli.wait_for(re.compile("^hello from another command$"))
        assert cli.wait() == 0, cli.output
        assert "serving" not in cli.output and "Traceback" not in cli.output


def test_appinfra_plugin_help_lists_the_serve_command() -> None:
    with AppCli([*APP, "--help"]) as cli:
        cli.wait_for(re.compile(r"serve\s+Serve /ping over HTTP"))
        assert cli.wait() == 0


def test_appinfra_plugin_without_appinfra_isolated_api_still_imports() -> None:
    """In a process where appinfra can't be imported: isolated_api imports fine, and asking it for
    ServerPlugin fails with an ImportError that says how to install the extra."""
    code = (
        "import sys; sys.modules['appinfra'] = None\n"
        "import isolated_api\n"
        "try:\n"
        "    from isolated_api import ServerPlugin\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ServerPlugin needs the appinfra package: pip install 'isolated_api[appinfra]'"


def test_appinfra_plugin_serve_in_direct_mode_stops_on_sigterm() -> None:
    """Steps: `serve_app serve` in direct mode (uvicorn in the CLI's own process); wait for the
    app's start-up; SIGTERM. Expect uvicorn's own shutdown sequence and exit code 0."""
    with AppCli([*APP, "serve"], env={"SERVE_APP_PORT": "0", "SERVE_APP_DIRECT": "1"}) as cli:
        cli.wait_for(re.compile("Application startup complete"))
        cli.send(signal.SIGTERM)
        assert cli.wait() == 0, cli.output
        assert "Application shutdown complete" in cli.output and "Traceback" not in cli.output
