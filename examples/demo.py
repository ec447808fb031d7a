"""The README demo: a token-generating "model" in this process, the HTTP API in a child process.

The engine is a stand-in (deterministic, no download): it "generates" the prompt's words in reverse
order, or a fixed text for an empty prompt, one token per chunk, ``--token-delay`` seconds apart.

    python examples/demo.py [--port 8000] [--token-delay 0.08]   # serves until Ctrl-C (or SIGTERM), stops cleanly
    python examples/demo.py --port 0 --smoke                     # makes its own requests, prints them, exits 0

HTTP (the child):   GET  /                     a page that shows the tokens as they arrive, and live: the
                                               worker's pid, pending, restarts and tokens/s (from
                                               /health/ready and /metrics) and the main process's count
                    POST /v1/generate          {"prompt", "max_tokens"} -> the whole text at once
                    POST /v1/generate/stream   the same as Server-Sent Events, one token per frame
                    GET  /v1/stats             the tokens generated so far, counted in the main process
                    POST /v1/demo/kill-worker  202, then the main process SIGKILLs this HTTP worker: a
                                               stream in flight breaks, the worker is restarted, the
                                               count in the main process carries on (demo only: it lets
                                               any visitor restart the worker; never ship such a route)
Main process:       a plain loop, ``request = request_q.get()``; each request gets a thread that puts
                    a reply (or one ``Token`` chunk per word, the last with ``is_final=True``) on
                    ``response_q``. A ``CancelRequest`` (the client went away: the page's Stop button,
                    Ctrl-C in curl; or its HTTP worker died) stops that thread, which says so on stdout.
"""

import argparse
import functools
import json
import multiprocessing
import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.request import ProxyHandler, Request, build_opener

from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field, field_validator
from pydantic_core import PydanticCustomError
from starlette.background import BackgroundTask
from starlette.requests import Request as HTTPRequest
from starlette.responses import Response

from isolated_api import IPC, CancelRequest, ErrorReply, IPCError, ServerBuilder, merge_text, sse_response

PAGE = Path(__file__).with_name("demo_page.html")
FIXED_TEXT = (
    "The HTTP layer runs in a child process while the model stays in the main process and streams "
    "these words to you one token at a time over a multiprocessing queue."
)
SAMPLE_PROMPT = "tokens these watch and demo the to welcome"


# --- Messages between the processes (module level: the child imports them under spawn) ---


@dataclass
class Generate:
    id: str
    prompt: str
    max_tokens: int
    stream: bool


@dataclass
class Token:
    id: str
    index: int
    text: str  # the word, with a leading space after the first: concatenated, the tokens give the text
    is_final: bool = False


@dataclass
class Completion:
    id: str
    text: str
    tokens: int
    main_pid: int


@dataclass
class CountTokens:
    id: str


@dataclass
class TokenCount:
    id: str
    tokens: int  # generated since the demo started, by every HTTP worker's requests
    main_pid: int


@dataclass
class KillWorker:
    """The page's kill button: SIGKILL the HTTP worker ``pid`` (the one that took the click)."""

    id: str
    pid: int


def say(line: str) -> None:
    """Prints ``line`` in one write. Generation threads print while the library logs to stderr on
    the same terminal; ``print()`` writes a line and its newline apart when output is unbuffered
    (``PYTHONUNBUFFERED``), and a log line could land between the two."""
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()


# --- HTTP side (runs in the child) ---


class GenerateIn(BaseModel):
    prompt: str = Field(default="", max_length=4000, description="its words come back reversed; empty: a fixed text")
    max_tokens: int = Field(default=64, ge=1, le=512)

    @field_validator("max_tokens", mode="before")
    @classmethod
    def _json_integer(cls, value: Any) -> Any:
        # What the schema says, no more: JSON Schema's integer takes 2.0 (pydantic does too), but not
        # true or "2", which pydantic would turn into numbers.
        if isinstance(value, bool | str):
            raise PydanticCustomError("int_type", "Input should be a valid integer")
        return value


class GenerateOut(BaseModel):
    text: str
    tokens: int
    main_pid: int


class StatsOut(BaseModel):
    tokens: int = Field(description="tokens generated since the demo started, counted in the main process")
    main_pid: int


STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": 'Server-Sent Events: `data: {"index": 0, "text": "...", "final": false}`, one per token',
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@functools.cache
def _page_html() -> str:
    return PAGE.read_text(encoding="utf-8")


async def page() -> HTMLResponse:
    return HTMLResponse(_page_html())


async def generate(body: GenerateIn, channel: IPC) -> GenerateOut:
    reply = await channel.submit(Generate(uuid.uuid4().hex, body.prompt, body.max_tokens, stream=False))
    return GenerateOut(text=reply.text, tokens=reply.tokens, main_pid=reply.main_pid)


def token_frame(token: Token) -> str:
    return json.dumps({"index": token.index, "text": token.text, "final": token.is_final}, ensure_ascii=False)


async def generate_stream(body: GenerateIn, request: HTTPRequest, channel: IPC) -> Response:
    # Tokens a slow client can't take yet are merged (texts concatenated): it still gets the whole text.
    request_id = uuid.uuid4().hex
    stream = channel.submit_streaming(Generate(request_id, body.prompt, body.max_tokens, stream=True), merge=merge_text)
    return await sse_response(stream, token_frame, request=request)


async def stats(channel: IPC) -> StatsOut:
    reply = await channel.submit(CountTokens(uuid.uuid4().hex))
    return StatsOut(tokens=reply.tokens, main_pid=reply.main_pid)


async def kill_worker(channel: IPC) -> JSONResponse:
    # Who kills: the main process, by SIGKILL, at an instant this worker does not choose, as the
    # OOM killer or `kill -9` would. A worker that killed itself after answering would pick a tidy
    # moment (its reply flushed) and show less than what the library claims to survive.
    # When: the request goes to the main process only after the 202 is sent (a background task runs
    # once the response is complete), so the 202 always reaches the page, and it says what is true
    # then: the kill was asked for, not done. The main process sends no reply: this worker is gone
    # before it could read one.
    pid = os.getpid()

    async def ask_main_to_kill() -> None:
        try:
            await channel.submit(KillWorker(uuid.uuid4().hex, pid))
        except IPCError as error:  # refused (not one of the server's workers), or no main process
            say(f"worker {pid}: kill refused: {error}")

    body = {"pid": pid, "detail": f"the main process will SIGKILL HTTP worker {pid}"}
    return JSONResponse(body, status_code=202, background=BackgroundTask(ask_main_to_kill))


# --- Main-process side: the "model" ---


class TokenCounter:
    """Tokens generated since start-up: state of the main process, which outlives its HTTP workers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one generation thread per request adds to it
        self._total = 0

    def add(self, count: int = 1) -> None:
        with self._lock:
            self._total += count

    @property
    def total(self) -> int:
        with self._lock:
            return self._total


def words_for(prompt: str, max_tokens: int) -> list[str]:
    """What the stand-in model generates: the prompt's words reversed, or the fixed text."""
    words = prompt.split()[::-1] or FIXED_TEXT.split()
    return words[:max_tokens]


def run_generate(
    request: Generate, response_q: Any, token_delay: float, cancelled: threading.Event, counter: TokenCounter
) -> None:
    words = words_for(request.prompt, request.max_tokens)
    texts = [word if index == 0 else f" {word}" for index, word in enumerate(words)]
    for index, text in enumerate(texts):
        if index and cancelled.wait(token_delay):  # the pacing, cut short when the client went away
            say(f"main: request {request.id} cancelled after {index} of {len(texts)} tokens")
            return
        counter.add()
        if request.stream:
            response_q.put(Token(request.id, index, text, is_final=index == len(texts) - 1))
    if not request.stream:
        response_q.put(Completion(request.id, "".join(texts), len(texts), os.getpid()))


def kill_worker_for(request: KillWorker, response_q: Any, worker_pids: Callable[[], set[int]]) -> None:
    # Only a pid the server started: never a signal to whatever process a message names.
    if request.pid not in worker_pids():
        response_q.put(ErrorReply(request.id, f"{request.pid} is not an HTTP worker of this server", 409))
        return
    say(f"main: SIGKILL to HTTP worker {request.pid}, as the page asked")
    os.kill(request.pid, signal.SIGKILL)


def serve(
    request_q: Any, response_q: Any, token_delay: float, counter: TokenCounter, worker_pids: Callable[[], set[int]]
) -> None:
    """The main loop: one thread per request, so a long generation does not hold up the others."""
    cancel_events: dict[str, threading.Event] = {}

    def generate_then_forget(request: Generate, cancelled: threading.Event) -> None:
        try:
            run_generate(request, response_q, token_delay, cancelled, counter)
        finally:
            cancel_events.pop(request.id, None)

    while (request := request_q.get()) is not None:
        if isinstance(request, CancelRequest):
            if (event := cancel_events.get(str(request.id))) is not None:
                event.set()
        elif isinstance(request, Generate):
            cancel_events[request.id] = cancelled = threading.Event()
            threading.Thread(target=generate_then_forget, args=(request, cancelled), daemon=True).start()
        elif isinstance(request, CountTokens):
            response_q.put(TokenCount(request.id, counter.total, os.getpid()))
        elif isinstance(request, KillWorker):
            kill_worker_for(request, response_q, worker_pids)


def worker_exited(counter: TokenCounter) -> Callable[[int | None, list[Hashable]], None]:
    def say_so(exitcode: int | None, abandoned: list[Hashable]) -> None:
        say(
            f"main: HTTP worker exited with code {exitcode}, abandoning {len(abandoned)} request(s); "
            f"{counter.total} tokens generated so far, and counting"
        )

    return say_so


# --- Printed commands and --smoke ---


def curl_commands(url: str) -> list[str]:
    body = json.dumps({"prompt": SAMPLE_PROMPT})
    header = "-H 'content-type: application/json'"
    return [
        f"curl -s -X POST {url}/v1/generate {header} -d '{body}'",
        f"curl -sN -X POST {url}/v1/generate/stream {header} -d '{body}'",
    ]


def _post(url: str, body: dict[str, Any]) -> Any:
    request = Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    return build_opener(ProxyHandler({})).open(request, timeout=30)


def smoke(url: str, request_q: Any) -> None:
    try:
        body = {"prompt": SAMPLE_PROMPT}
        with _post(f"{url}/v1/generate", body) as response:
            say(f"POST /v1/generate -> {response.status} {response.read().decode()}")
        with _post(f"{url}/v1/generate/stream", body) as response:
            frames = [line[len(b"data: ") :].decode().strip() for line in response if line.startswith(b"data: ")]
            say(f"POST /v1/generate/stream -> {response.status} [{', '.join(frames)}]")
        with build_opener(ProxyHandler({})).open(f"{url}/v1/stats", timeout=30) as response:
            say(f"GET /v1/stats -> {response.status} {response.read().decode()}")
    finally:
        request_q.put(None)  # ends the main loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8000, help="0: a free port")
    parser.add_argument("--token-delay", type=float, default=0.08, help="seconds between tokens (default 0.08)")
    parser.add_argument("--smoke", action="store_true", help="make a few requests, print them and exit")
    args = parser.parse_args()
    if args.token_delay < 0:
        parser.error("--token-delay must be >= 0")
    request_q: Any = multiprocessing.Queue()  # requests arrive here (this process reads it)
    response_q: Any = multiprocessing.Queue()  # replies and tokens go here, with the request's id
    server = (
        ServerBuilder("demo")
        .with_host("127.0.0.1")
        .with_port(args.port)
        .with_title("isolated_api demo")
        .with_description("A stand-in token generator in the main process; this API in a child process.")
        .routes.with_route("/", page, include_in_schema=False, response_class=HTMLResponse)
        .with_route("/v1/generate", generate, methods=["POST"], response_model=GenerateOut, tags=["generate"])
        .with_route(
            "/v1/generate/stream", generate_stream, methods=["POST"], tags=["generate"], responses=STREAM_RESPONSES
        )
        .with_route("/v1/stats", stats, methods=["GET"], response_model=StatsOut, tags=["generate"])
        # Out of the schema: a demo control, not API (a fuzzer would kill the worker on every call).
        .with_route("/v1/demo/kill-worker", kill_worker, methods=["POST"], status_code=202, include_in_schema=False)
        .done()
        .subprocess.with_ipc(request_q, response_q)
        .with_cancellation()  # a client that leaves mid-stream (or whose worker dies) stops its generation
        .with_auto_restart()  # a dead HTTP worker is replaced; the main process and its state carry on
        .done()
        .build()
    )
    counter = TokenCounter()
    server.add_child_exit_callback(worker_exited(counter))
    # Also takes over SIGTERM (still at its default here): `kill` or a process manager stops the demo
    # as Ctrl-C does, after in-flight streams finish.
    process = server.start_subprocess()
    try:
        url = f"http://127.0.0.1:{server.port}"
        say(f"HTTP child {process.pid} serving {url} (docs: {url}/docs); main process {os.getpid()}")
        say(f"open {url}/ in a browser to watch the tokens arrive, or try:")
        for command in curl_commands(url):
            say(f"  {command}")
        say("Ctrl-C to stop")
        if args.smoke:
            threading.Thread(target=smoke, args=(url, request_q)).start()
        serve(request_q, response_q, args.token_delay, counter, lambda: {p.pid for p in server.processes if p.pid})
    except KeyboardInterrupt:
        say("\nstopping")
    finally:
        server.stop(timeout=5)
    say("stopped")


if __name__ == "__main__":
    main()
