"""The README's 30-second example: a typed JSON body checked in the HTTP child, the work done in
this process.

    python examples/quickstart.py           # serves http://127.0.0.1:8000 until Ctrl-C
    python examples/quickstart.py --smoke   # a free port: posts a valid and an invalid body, prints both answers, exits

The README shows the code between "README: begin" and "README: end" without the lines that end in
"# --smoke" and without the "--smoke: begin/end" block; tests/test_docs.py checks that they match.
"""

# README: begin
import json  # --smoke
import multiprocessing
import signal  # --smoke
import sys  # --smoke
import threading  # --smoke
import urllib.error  # --smoke
import urllib.request  # --smoke
from dataclasses import dataclass

from pydantic import BaseModel

from isolated_api import IPC, ServerBuilder, new_request_id


class ShoutIn(BaseModel):  # the HTTP body, checked in the child: a missing field is a 422
    text: str


@dataclass
class Job:  # a request to the main process: any picklable object with an .id
    id: str
    text: str


@dataclass
class Reply:  # its reply: any picklable object with the same .id
    id: str
    text: str


async def shout(body: ShoutIn, channel: IPC) -> dict[str, str]:  # runs in the HTTP child
    reply = await channel.submit(Job(id=new_request_id(), text=body.text))
    return {"text": reply.text}


# --smoke: begin
def smoke(port: int, main_thread: int) -> None:
    """Posts a valid body and one missing its field; prints ``POST /shout BODY -> STATUS JSON`` for
    each; then ends the main loop as Ctrl-C does, with SIGINT to the main thread."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        for body in ({"text": "hello"}, {}):
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/shout", json.dumps(body).encode(), {"content-type": "application/json"}
            )
            try:
                with opener.open(request, timeout=30) as response:
                    status, text = response.status, response.read().decode()
            except urllib.error.HTTPError as error:
                status, text = error.code, error.read().decode()
            print(f"POST /shout {json.dumps(body)} -> {status} {text}", flush=True)
    finally:
        signal.pthread_kill(main_thread, signal.SIGINT)


# --smoke: end
if __name__ == "__main__":
    request_q: "multiprocessing.Queue[Job]" = multiprocessing.Queue()  # your loop reads requests here
    response_q: "multiprocessing.Queue[Reply]" = multiprocessing.Queue()  # and puts the replies here
    server = (
        ServerBuilder("shout")
        .with_host("127.0.0.1")  # this machine only ("0.0.0.0": every interface)
        .with_port(8000)
        .with_port(0 if "--smoke" in sys.argv else 8000)  # --smoke
        .routes.with_route("/shout", shout, methods=["POST"])
        .done()
        .subprocess.with_ipc(request_q, response_q)  # the HTTP API runs in a child process
        .done()
        .build()
    )
    server.start_subprocess()  # returns once the child accepts connections
    print(f"serving on http://127.0.0.1:{server.port}", flush=True)
    if "--smoke" in sys.argv:  # --smoke
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C on, even in a background job  # --smoke
        threading.Thread(target=smoke, args=(server.port, threading.get_ident())).start()  # --smoke
    try:
        while True:  # until Ctrl-C
            job = request_q.get()
            response_q.put(Reply(id=job.id, text=job.text.upper()))  # the heavy work happens here
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM once in-flight requests are answered, ends the loop
        pass
    finally:
        server.stop(timeout=5)  # drains in-flight requests, then ends the child
    print("stopped", flush=True)
# README: end
