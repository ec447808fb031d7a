"""The fluent builder: configurers chain and return the builder, bad input fails at build time
with a message naming the problem, and the built Server reflects the configuration."""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter

from isolated_api import (
    ApiConfig,
    BuildError,
    ConfigError,
    ConflictingSettingsError,
    IPCConfig,
    OutboxLimits,
    PickleCodec,
    RequestLimits,
    RestartPolicy,
    Server,
    ServerBuilder,
    UvicornConfig,
)
from isolated_api.worker.body_limits import BodyLimitMiddleware
from tests.helpers import ping_route

router = APIRouter()


@router.get("/item")
async def item() -> dict[str, int]:
    return {"item": 1}


def test_builder_chains_every_configurer_back_to_the_builder() -> None:
    rq: queue.Queue[Any] = queue.Queue()
    sq: queue.Queue[Any] = queue.Queue()
    b = ServerBuilder("chain")
    assert b.routes.with_route("/ping", ping_route).done() is b
    assert b.routes.with_router(router, prefix="/v1", tags=["v1"]).done() is b
    assert b.subprocess.with_ipc(rq, sq).with_max_pending(5).with_poll_interval(0.5).done() is b
    assert b.uvicorn.with_log_level("info").with_backlog(10).with_timeout_keep_alive(2).done() is b
    server = b.with_host("127.0.0.1").with_port(0).with_title("T").with_version("9").with_timeout(3).build()
    assert isinstance(server, Server) and server.is_subprocess_mode
    assert server.config.uvicorn.log_level == "info" and server.config.uvicorn.backlog == 10
    assert server.config.response_timeout == 3 and server.config.title == "T"
    assert server.port is None  # unknown until started
    assert not server.is_running


def test_builder_app_has_the_routes_and_openapi() -> None:
    server = (
        ServerBuilder("app")
        .with_title("Inference")
        .with_version("1.2.3")
        .routes.with_route("/ping", ping_route, tags=["health"])
        .with_router(router, prefix="/v1")
        .done()
        .build()
    )

    async def fetch() -> tuple[Any, Any, Any]:
        transport = httpx.ASGITransport(app=server.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            results = [await client.get(path) for path in ("/ping", "/v1/item", "/openapi.json")]
        return tuple(r.json() for r in results)

    ping, item_body, spec = asyncio.run(fetch())
    assert ping["pong"] is True
    assert item_body == {"item": 1}
    assert spec["info"] == {"title": "Inference", "version": "1.2.3"}
    assert spec["paths"]["/ping"]["get"]["tags"] == ["health"]


def test_builder_with_config_replaces_whole_configs() -> None:
    b = ServerBuilder("cfg").with_config(ApiConfig(port=0, uvicorn=UvicornConfig(log_level="error")))
    b.subprocess.with_ipc(queue.Queue(), queue.Queue()).with_config(IPCConfig(max_pending=7))
    server = b.build()
    assert server.config.port == 0 and server.config.uvicorn.log_level == "error"
    with pytest.raises(ConfigError, match="ApiConfig"):
        ServerBuilder("x").with_config({"port": 1})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="IPCConfig"):
        ServerBuilder("x").subprocess.with_config(ApiConfig())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="UvicornConfig"):
        ServerBuilder("x").uvicorn.with_config(ApiConfig())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "mistake",
    [
        lambda b: b.with_port(70000),
        lambda b: b.with_timeout(-1),
        lambda b: b.uvicorn.with_log_level("loud"),
        lambda b: b.subprocess.with_max_pending(0),
        lambda b: b.subprocess.with_start_method("clone"),
        lambda b: b.routes.with_route("no-slash", ping_route),
        lambda b: b.routes.with_route("/x", "not callable"),
        lambda b: b.routes.with_route("/x", ping_route, methods=["FETCH"]),
        lambda b: b.routes.with_router(object()),
        lambda b: b.routes.with_router(router, prefix="v1"),
        lambda b: b.routes.with_middleware("not a class"),
        lambda b: b.routes.with_exception_handler("boom", ping_route),
        lambda b: b.subprocess.with_ipc(object(), queue.Queue()),
        lambda b: b.routes.with_cors(["*"], allow_credentials=True),
        lambda b: b.subprocess.with_gc_threshold(0),
        lambda b: b.subprocess.with_gc_threshold(True),
        lambda b: b.subprocess.with_gc_threshold(2.5),
        lambda b: b.uvicorn.with_max_body_size(-1),
        lambda b: b.uvicorn.with_max_header_size(100),
        lambda b: b.uvicorn.with_max_headers(0),
        lambda b: b.uvicorn.with_header_timeout(None),
        lambda b: b.uvicorn.with_body_timeout(0),
        lambda b: b.with_drain_timeout(0),
        lambda b: b.with_drain_timeout(float("nan")),
        lambda b: b.with_drain_timeout(True),
        lambda b: b.with_drain_timeout("10"),
        lambda b: b.subprocess.with_stalled_worker_limits(0),
        lambda b: b.subprocess.with_stalled_worker_limits(True),
        lambda b: b.subprocess.with_stalled_worker_limits(stall_timeout=0),
        lambda b: b.subprocess.with_stalled_worker_limits(stall_timeout=float("inf")),
        lambda b: b.subprocess.with_reply_busy_wait(-0.001),
        lambda b: b.subprocess.with_reply_busy_wait(0.5),
        lambda b: b.subprocess.with_reply_busy_wait(float("nan")),
        lambda b: b.subprocess.with_reply_busy_wait(True),
        lambda b: b.subprocess.with_max_message_size(1024),
        lambda b: b.subprocess.with_max_message_size(True),
        lambda b: b.subprocess.with_max_message_size(2.0**20),
    ],
)
def test_builder_refuses_bad_input_with_config_error(mistake: Any) -> None:
    with pytest.raises(ConfigError):
        mistake(ServerBuilder("bad"))


def test_builder_refuses_a_reply_busy_wait_with_remote_engines() -> None:
    """The busy wait watches the pipes of with_ipc; with remote engines it would do nothing."""
    builder = ServerBuilder("x").subprocess.with_engines("tcp://gpu-1:5700", allow_pickle=True)
    with pytest.raises(BuildError, match="with_reply_busy_wait applies to the pipes of with_ipc"):
        builder.with_reply_busy_wait(0.0003).done().build()


def test_builder_refuses_the_same_queue_twice() -> None:
    q: queue.Queue[Any] = queue.Queue()
    with pytest.raises(ConfigError, match="two different queues"):
        ServerBuilder("x").subprocess.with_ipc(q, q)


def test_builder_checks_files_and_modes_at_build(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "child.log"
    b = ServerBuilder("x").subprocess.with_ipc(queue.Queue(), queue.Queue()).with_log_file(str(missing)).done()
    with pytest.raises(ConfigError, match="does not exist"):
        b.build()
    ssl = ServerBuilder("x").uvicorn.with_ssl(str(tmp_path / "k.pem"), str(tmp_path / "c.pem")).done()
    with pytest.raises(ConfigError, match="ssl_keyfile"):
        ssl.build()
    direct_log = ServerBuilder("x").with_config(ApiConfig(log_file=str(tmp_path / "a.log")))
    with pytest.raises(BuildError, match="subprocess mode"):
        direct_log.build()
    workers = ServerBuilder("x").uvicorn.with_workers(2).done()
    with pytest.raises(BuildError, match="workers=2 needs subprocess mode"):
        workers.build()


def test_builder_direct_mode_does_not_need_picklable_handlers() -> None:
    def local() -> dict[str, str]:
        return {}

    server = ServerBuilder("direct").routes.with_route("/l", local).done().build()
    assert not server.is_subprocess_mode


def test_builder_accepts_multiprocessing_queues() -> None:
    ctx = multiprocessing.get_context("spawn")
    rq, sq = ctx.Queue(), ctx.Queue()
    try:
        server = ServerBuilder("mp").subprocess.with_ipc(rq, sq).done().build()
        assert server.ipc is not None and server.ipc.pending_count == 0
    finally:
        for q in (rq, sq):
            q.close()
            q.join_thread()


def test_builder_request_limits_reach_the_spec_and_the_app_recipe() -> None:
    """Each limit option changes its one setting; the body's limits travel with the app recipe
    (the worker's app enforces them), the head's with the uvicorn settings."""
    b = (
        ServerBuilder("limits")
        .uvicorn.with_max_body_size(None)
        .with_max_header_size(8192)
        .with_max_headers(20)
        .with_header_timeout(5)
        .with_body_timeout(None)
        .done()
    )
    limits = b.build().config.uvicorn.limits
    assert limits == RequestLimits(
        max_body_size=None, max_header_size=8192, max_headers=20, header_timeout=5, body_timeout=None
    )
    app = ServerBuilder("d").uvicorn.with_max_body_size(10).done().build().app
    (body_limit,) = [m for m in app.user_middleware if m.cls is BodyLimitMiddleware]  # type: ignore[comparison-overlap]
    assert body_limit.kwargs["limits"] == RequestLimits(max_body_size=10)


def _module_level_resolver(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]


def test_builder_each_subprocess_method_sets_one_field_of_ipc_config() -> None:
    """Every .subprocess setting lands in the section's IPCConfig, and nowhere else: the methods
    give the same IPCConfig as writing it out."""
    codec = PickleCodec()
    server = (
        ServerBuilder("fields")
        .subprocess.with_ipc(queue.Queue(), queue.Queue())
        .with_max_pending(7)
        .with_queue_timeout(0.5)
        .with_overload_status(429, retry_after=3)
        .with_codec(codec)
        .with_start_method("forkserver")
        .with_auto_restart(max_restarts=2, backoff=0.1)
        .with_cancellation()
        .with_gc_threshold(None)
        .with_stalled_worker_limits(1024, stall_timeout=5.0)
        .with_max_message_size(2 * 1024 * 1024)
        .with_reply_busy_wait(0.0003)
        .done()
        .with_drain_timeout(4)
        .build()
    )
    assert server.ipc_config == IPCConfig(
        max_pending=7,
        queue_timeout=0.5,
        overload_status=429,
        retry_after=3,
        codec=codec,
        start_method="forkserver",
        restart_policy=RestartPolicy(max_restarts=2, backoff=0.1),
        cancellation=True,
        gc_threshold=None,
        stalled_worker_limits=OutboxLimits(1024, 5.0),
        max_message_size=2 * 1024 * 1024,
        reply_busy_wait=0.0003,
    )
    assert server.config.drain_timeout == 4
    assert server.codec is codec


def test_builder_with_config_sets_every_setting_of_its_section() -> None:
    """``.subprocess.with_config(IPCConfig(...))`` and ``with_config(ApiConfig(...))`` cover the
    settings that used to live only in the builder (codec, start method, message size, drain
    timeout...): the server has them, and the rules between settings see them."""
    ipc = IPCConfig(start_method="forkserver", cancellation=True, max_message_size=1 << 20, gc_threshold=5000)
    server = (
        ServerBuilder("cfg")
        .with_config(ApiConfig(drain_timeout=3, uvicorn=UvicornConfig(limits=RequestLimits(max_body_size=1 << 20))))
        .subprocess.with_ipc(queue.Queue(), queue.Queue())
        .with_config(ipc)
        .done()
        .build()
    )
    assert server.ipc_config is ipc and server.config.drain_timeout == 3
    too_small = ServerBuilder("cfg").subprocess.with_ipc(queue.Queue(), queue.Queue()).with_config(ipc).done()
    with pytest.raises(ConflictingSettingsError, match=r"max_body_size \(2097152 bytes\).*max_message_size"):
        too_small.uvicorn.with_max_body_size(2 << 20).done().build()
    with pytest.raises(ConfigError, match="start_method must be one of"):
        IPCConfig(start_method="clone")
    with pytest.raises(ConfigError, match="codec must be a codec"):
        IPCConfig(codec=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="drain_timeout"):
        ApiConfig(drain_timeout=0)


def _queues_and_engines(b: ServerBuilder) -> ServerBuilder:
    return b.subprocess.with_ipc(queue.Queue(), queue.Queue()).done().engines.with_engines("tcp://gpu-1:5700").done()


@pytest.mark.parametrize(
    ("configure", "names"),
    [
        (_queues_and_engines, ("with_ipc", "EnginesConfig.addresses")),
        (
            lambda b: (
                b.engines.with_engines("tcp://gpu-1:5700", allow_pickle=True)
                .done()
                .subprocess.with_reply_busy_wait(0.001)
                .done()
            ),
            ("IPCConfig.reply_busy_wait", "EnginesConfig"),
        ),
        (
            lambda b: b.engines.with_engines("tcp://gpu-1:5700").done(),
            ("IPCConfig.codec", "EnginesConfig.allow_pickle"),
        ),
        (
            lambda b: b.engines.with_engines("tcp://h:5700", allow_pickle=True, resolver=lambda h, p: [h]).done(),
            ("EnginesConfig.resolver", "IPCConfig.start_method='spawn'"),
        ),
        (lambda b: b.uvicorn.with_workers(2).done(), ("UvicornConfig.workers=2", "with_ipc")),
        (lambda b: b.subprocess.with_log_file("/tmp/child.log").done(), ("ApiConfig.log_file", "subprocess mode")),
        (
            lambda b: (
                b.subprocess.with_ipc(queue.Queue(), queue.Queue())
                .with_max_message_size(1 << 20)
                .done()
                .uvicorn.with_max_body_size((1 << 20) + 1)
                .done()
            ),
            ("RequestLimits.max_body_size", "IPCConfig.max_message_size"),
        ),
    ],
)
def test_builder_rules_between_settings_name_both(configure: Any, names: tuple[str, ...]) -> None:
    """Each rule that joins two settings is the spec's, checked at build(): one
    ConflictingSettingsError (a ConfigError, and a BuildError as before) naming both settings."""
    with pytest.raises(ConflictingSettingsError) as refused:
        configure(ServerBuilder("rules")).build()
    assert isinstance(refused.value, ConfigError) and isinstance(refused.value, BuildError)
    for name in names:
        assert name in str(refused.value), str(refused.value)


def test_builder_a_module_level_resolver_passes_the_rule() -> None:
    server = (
        ServerBuilder("resolver")
        .engines.with_engines("tcp://h:5700", allow_pickle=True, resolver=_module_level_resolver)
        .done()
        .build()
    )
    assert server.is_subprocess_mode
