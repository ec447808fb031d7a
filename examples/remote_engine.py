"""The work on another machine: an engine host (the GPU machine's main process) and an API host
that sends it requests over ZeroMQ. Run each where it belongs:

    python examples/remote_engine.py engine tcp://0.0.0.0:5700          # on the GPU machine
    python examples/remote_engine.py api tcp://gpu-1:5700 [more ...]    # POST :8000/generate {"prompt": "hi"}
    python examples/remote_engine.py --smoke    # both on this machine (port 0), one POST, exit

The engine's loop is the one you would write on one machine; only ``EngineHost`` is new. msgspec
types on the wire: the engine decodes only these (pickle from the network would run code).
"""

import json
import multiprocessing
import queue
import sys
import time
from typing import Any
from urllib.request import ProxyHandler, Request, build_opener

import msgspec

from isolated_api import IPC, EngineHost, MsgspecCodec, ServerBuilder, new_request_id


class Generate(msgspec.Struct, tag=True):
    id: str
    prompt: str


class Generated(msgspec.Struct, tag=True):
    id: str
    text: str


CODEC = MsgspecCodec(Generate, Generated)


async def generate(body: dict[str, Any], channel: IPC) -> dict[str, Any]:
    reply = await channel.submit(Generate(new_request_id(), str(body.get("prompt", ""))))
    return {"text": reply.text}


def run_engine(bind: str, started: Any = None) -> None:
    """The GPU machine's main process: its queues served to API hosts, and the usual loop."""
    request_q: queue.Queue[Any] = queue.Queue()
    response_q: queue.Queue[Any] = queue.Queue()
    with EngineHost(request_q, response_q, bind=bind, codec=CODEC) as host:
        print(f"engine host serving {host.address}", flush=True)
        if started is not None:
            started.put(host.address)
        try:
            while (item := request_q.get()) is not None:
                job = CODEC.decode(item)  # requests arrive as the codec's bytes
                if isinstance(job, Generate):
                    response_q.put(Generated(job.id, job.prompt[::-1]))  # the heavy work happens here
        except KeyboardInterrupt:
            pass


def api_server(port: int, *addresses: str) -> Any:
    return (
        ServerBuilder("api")
        .with_host("127.0.0.1")
        .with_port(port)
        .routes.with_route("/generate", generate, methods=["POST"])
        .done()
        .engines.with_engines(*addresses)
        .with_codec(CODEC)
        .done()
        .build()
    )


def smoke() -> None:
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Queue()
    engine = ctx.Process(target=run_engine, args=("tcp://127.0.0.1:0", started), daemon=True)
    engine.start()
    address = started.get(timeout=30)
    server = api_server(0, address)
    server.start_subprocess()
    try:
        url = f"http://127.0.0.1:{server.port}"
        opener = build_opener(ProxyHandler({}))
        deadline = time.monotonic() + 30
        # Ready once an engine answered its ping (a few milliseconds after start).
        while True:
            try:
                with opener.open(f"{url}/health/ready", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
        request = Request(
            f"{url}/generate", json.dumps({"prompt": "hello"}).encode(), {"content-type": "application/json"}
        )
        with opener.open(request, timeout=10) as response:
            print(f"POST /generate -> {response.status} {response.read().decode()}", flush=True)
    finally:
        server.stop(timeout=5)
        engine.kill()
        engine.join(10)
    print("stopped", flush=True)


if __name__ == "__main__":
    if "--smoke" in sys.argv:
        smoke()
    elif len(sys.argv) >= 3 and sys.argv[1] == "engine":
        run_engine(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == "api":
        server = api_server(8000, *sys.argv[2:])
        server.start_subprocess()
        print(f"API host on http://127.0.0.1:{server.port}, engines: {', '.join(sys.argv[2:])}", flush=True)
        try:
            server.wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop(timeout=5)
    else:
        sys.exit(__doc__)
