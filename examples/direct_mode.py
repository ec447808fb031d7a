"""Direct mode: no queues, no child process. ``server.start()`` runs uvicorn in this process and
blocks until ``server.stop()`` (or Ctrl-C).

    python examples/direct_mode.py           # serves http://127.0.0.1:8000/hello until Ctrl-C
    python examples/direct_mode.py --smoke   # port 0, asks /hello once, prints the answer, exits
"""

import sys
import threading
import time
import urllib.request

from isolated_api import Server, ServerBuilder


async def hello(name: str = "world") -> dict[str, str]:
    return {"message": f"hello {name}"}


def ask_once_then_stop(server: Server) -> None:
    try:
        deadline = time.monotonic() + 30
        while not server.is_running and time.monotonic() < deadline:
            time.sleep(0.05)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # localhost: no proxy
        with opener.open(f"http://127.0.0.1:{server.port}/hello?name=direct", timeout=10) as response:
            print(f"GET /hello -> {response.status} {response.read().decode()}", flush=True)
    finally:
        server.stop(timeout=5)


if __name__ == "__main__":
    smoke = "--smoke" in sys.argv
    server = (
        ServerBuilder("direct")
        .with_host("127.0.0.1")
        .with_port(0 if smoke else 8000)
        .routes.with_route("/hello", hello)
        .done()
        .build()
    )
    if smoke:
        threading.Thread(target=ask_once_then_stop, args=(server,), daemon=True).start()
    print("serving in this process; Ctrl-C to stop", flush=True)
    server.start()
    print("stopped", flush=True)
