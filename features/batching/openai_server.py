"""The whole server, as an inference team would assemble it: the HTTP worker(s) from the builder,
and in this process an ``Engine`` that batches embeddings (``engine.batch``), steps chat streams
(``engine.steps``) and lists the models. ``ModelServer(options)`` is used as a context manager
(``python -m features.batching`` and the slice's tests both do)."""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from fastapi import Depends

from isolated_api import Engine, Server, ServerBuilder

from .batching_models import Catalog, FakeChat, FakeDevice, FakeEmbedder
from .openai_messages import Chat, Embed, ListModels
from .openai_routes import EXCEPTION_HANDLERS, ApiKeyCheck, chat_route, embeddings_route, models_route


@dataclass(frozen=True)
class ServeOptions:
    api_key: str
    host: str = "127.0.0.1"
    port: int = 0
    workers: int = 1
    # The fake models' cost: seconds per call, plus per item (an embedded string, an active stream).
    call_seconds: float = 0.005
    embed_item_seconds: float = 0.0001
    step_item_seconds: float = 0.00005
    max_batch_size: int = 32
    max_wait: float = 0.002
    max_active: int = 32
    timeout: float = 60.0
    log_file: str | None = None


def build_server(options: ServeOptions, request_q: Any, response_q: Any) -> Server:
    # One dependency on every /v1 route: a request without the key never reaches the main process.
    guarded = {"dependencies": [Depends(ApiKeyCheck(options.api_key))]}
    routes = (
        ServerBuilder("openai-compatible")
        .with_host(options.host)
        .with_port(options.port)
        .with_timeout(options.timeout)
        .with_title("fake models, OpenAI-compatible")
        .routes.with_route("/v1/models", models_route, **guarded)
        .with_route("/v1/embeddings", embeddings_route, methods=["POST"], **guarded)
        .with_route("/v1/chat/completions", chat_route, methods=["POST"], **guarded)
    )
    for exc_class, handler in EXCEPTION_HANDLERS:
        routes = routes.with_exception_handler(exc_class, handler)
    subprocess = (
        routes.done()
        .uvicorn.with_workers(options.workers)
        .done()
        .subprocess.with_ipc(request_q, response_q)
        # A client that goes away mid-stream frees its place in the step loop (leave "cancelled").
        .with_cancellation()
    )
    if options.log_file is not None:
        subprocess = subprocess.with_log_file(options.log_file)
    return subprocess.done().build()


class ModelServer:
    """The engine and the HTTP worker(s) over a fresh pair of queues. ``embedder`` and ``chat`` are
    the fake models (their counters are what tests read)."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        ctx = multiprocessing.get_context("spawn")
        self.request_q, self.response_q = ctx.Queue(), ctx.Queue()
        self.embedder = FakeEmbedder(FakeDevice(options.call_seconds, options.embed_item_seconds))
        self.chat = FakeChat(FakeDevice(options.call_seconds, options.step_item_seconds))
        self.engine = Engine(self.request_q, self.response_q, concurrency=8)
        self.engine.handle(ListModels, Catalog())
        self.engine.batch(Embed, max_batch_size=options.max_batch_size, max_wait=options.max_wait)(self.embedder)
        self.engine.steps(Chat, self.chat, max_active=options.max_active)
        self.server = build_server(options, self.request_q, self.response_q)

    @property
    def url(self) -> str:
        return f"http://{self.options.host}:{self.server.port}"

    def start(self) -> Self:
        self.engine.start()
        try:
            self.server.start_subprocess()
        except BaseException:
            self.engine.stop()
            raise
        return self

    def stop(self) -> None:
        # The HTTP side first, while the engine still answers what is in flight; then the engine.
        self.server.stop(timeout=5.0)
        self.engine.stop(timeout=5.0)
        for q in (self.request_q, self.response_q):
            q.cancel_join_thread()
            q.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
