"""A minimal appinfra CLI app with ``ServerPlugin``, run by the slice's tests as a user would, from
the directory that holds the slice's top-level package (here: the repository's root):

    python -m features.appinfra_plugin.serve_app serve     # until SIGINT / SIGTERM
    python -m features.appinfra_plugin.serve_app hello     # another command: the server never starts

(A copy elsewhere runs by its own name: ``python -m myapp.serving.serve_app serve``.)

$SERVE_APP_PORT picks the port (default 8000; 0 for a free one, logged in the "serving" line);
SERVE_APP_DIRECT=1 serves in this process (direct mode) instead of a child.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from typing import Any

from appinfra.app import AppBuilder

from isolated_api import ServerBuilder, ServerPlugin


async def ping() -> dict[str, object]:
    return {"pong": True, "pid": os.getpid()}


def hello(**kwargs: object) -> int:
    print("hello from another command", flush=True)
    return 0


def main() -> int:
    request_q: Any = multiprocessing.Queue()
    response_q: Any = multiprocessing.Queue()
    builder = (
        ServerBuilder("serve-app")
        .with_host("127.0.0.1")
        .with_port(int(os.environ.get("SERVE_APP_PORT", "8000")))
        .routes.with_route("/ping", ping)
        .done()
    )
    if os.environ.get("SERVE_APP_DIRECT") == "1":  # direct mode: uvicorn in this process, logging its URL
        builder.uvicorn.with_log_level("info")
    else:
        builder.subprocess.with_ipc(request_q, response_q)
    server = builder.build()
    app = (
        AppBuilder("serve-app")
        .tools.with_plugin(ServerPlugin(server, tool_help="Serve /ping over HTTP"))
        .with_cmd("hello", hello, help_text="Say hello without serving")
        .done()
        .build()
    )
    return app.main()


if __name__ == "__main__":
    sys.exit(main())
