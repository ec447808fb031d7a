"""Example 3: a CLI app built with appinfra's AppBuilder; ``ServerPlugin(server)`` gives it a
``serve`` command that runs the HTTP API (in a child process) until Ctrl-C / SIGTERM, and the app's
shutdown stops the server. The engine answers the requests in this process.

    pip install 'isolated_api[appinfra]'
    python examples/cli_app.py serve        # POST :8000/shout {"text": "hi"}; $PORT picks another port (0: a free one)
    python examples/cli_app.py --help
"""

import multiprocessing
import os
import sys
import uuid
from dataclasses import dataclass
from typing import Any

from appinfra.app import AppBuilder

from isolated_api import IPC, Engine, ServerBuilder, ServerPlugin


@dataclass
class Shout:
    id: str
    text: str


async def shout_route(body: dict[str, Any], channel: IPC) -> dict[str, Any]:
    reply = await channel.submit(Shout(uuid.uuid4().hex, str(body.get("text", ""))))
    return {"text": reply.data}


def shout(request: Shout) -> str:
    return request.text.upper()


if __name__ == "__main__":
    request_q: Any = multiprocessing.Queue()
    response_q: Any = multiprocessing.Queue()
    server = (
        ServerBuilder("shout")
        .with_host("127.0.0.1")
        .with_port(int(os.environ.get("PORT", "8000")))
        .routes.with_route("/shout", shout_route, methods=["POST"])
        .done()
        .subprocess.with_ipc(request_q, response_q)
        .done()
        .build()
    )
    engine = Engine(request_q, response_q)
    engine.handle(Shout, shout)

    app = (
        AppBuilder("shout-cli")
        .tools.with_plugin(ServerPlugin(server))
        .done()
        .lifecycle.with_hook("startup", lambda _: engine.start())
        .with_hook("shutdown", lambda _: engine.stop())
        .done()
        .build()
    )
    sys.exit(app.main())
