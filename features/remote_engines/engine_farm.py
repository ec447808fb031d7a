"""Test scaffolding for the remote_engines slice: engine hosts in processes of their own, and API
servers that dial them (all on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import multiprocessing
from dataclasses import dataclass, field
from typing import Any

import httpx

from isolated_api import ServerBuilder
from isolated_api.testing import loopback_builder, pid_alive, wait_until

from .remote_engines import CODEC, engine_main, generate, stream

_ctx = multiprocessing.get_context("spawn")


@dataclass
class EngineProcess:
    """One GPU host: its process, the address API hosts dial, and what reached its loop."""

    name: str
    process: Any
    address: str
    pid: int
    events: Any
    stop_event: Any
    seen: list[tuple[Any, ...]] = field(default_factory=list)

    def drain_events(self) -> list[tuple[Any, ...]]:
        """Everything its loop reported so far (``("job", id)``, ``("cancel", id, reason)``)."""
        while True:
            try:
                self.seen.append(self.events.get_nowait())
            except Exception:
                return self.seen

    def seen_jobs(self) -> list[str]:
        """The prompts of the jobs its loop read so far."""
        return [str(event[2]) for event in self.drain_events() if event[0] == "job"]

    def kill(self) -> None:
        self.process.kill()
        self.process.join(10)

    def stop(self) -> None:
        self.stop_event.set()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


class EngineFarm:
    def __init__(self) -> None:
        self.started: list[EngineProcess] = []

    def start(self, name: str, bind: str = "tcp://127.0.0.1:0", **options: Any) -> EngineProcess:
        started, events, stop = _ctx.Queue(), _ctx.Queue(), _ctx.Event()
        process = _ctx.Process(
            target=engine_main, args=(bind, name, started, stop, events), kwargs=options, daemon=True
        )
        process.start()
        try:
            address, pid = started.get(timeout=30)
        except Exception:
            process.kill()
            raise
        engine = EngineProcess(name, process, address, pid, events, stop)
        self.started.append(engine)
        return engine

    def stop_all(self) -> None:
        for engine in self.started:
            if pid_alive(engine.pid):
                engine.stop()


def api_builder(*addresses: str, timeout: float = 20.0, **options: Any) -> ServerBuilder:
    """An API host in front of ``addresses``: POST /generate (unary) and POST /stream (SSE)."""
    return (
        loopback_builder("api", timeout=timeout)
        .routes.with_route("/generate", generate, methods=["POST"])
        .with_route("/stream", stream, methods=["POST"])
        .done()
        .engines.with_engines(*addresses, **{"ping_interval": 0.25, "ping_timeout": 1.5, **options})
        .with_codec(CODEC)
        .done()
        .subprocess.with_max_pending(2000)
        .done()
    )


def wait_ready(base: str, engines: int, timeout: float = 20.0) -> None:
    """Until the API host's readiness lists ``engines`` engines ready."""

    def ready() -> bool:
        try:
            body = httpx.get(f"{base}/health/ready", timeout=2).json()
        except httpx.HTTPError:
            return False
        return bool(sum(e["state"] == "ready" for e in body.get("engines", [])) >= engines)

    wait_until(ready, timeout, f"{engines} engine(s) ready")


def post_all(base: str, path: str, bodies: list[dict[str, Any]], timeout: float = 30.0) -> list[Any]:
    """POSTs every body at once (one connection each) and returns the ``httpx.Response``s in order."""

    async def run() -> list[Any]:
        limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as client:
            return list(await asyncio.gather(*(client.post(path, json=body) for body in bodies)))

    return asyncio.run(run())


def ready_body(base: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{base}/health/ready", timeout=5).json()
    return body


def engine_view(base: str, address: str) -> dict[str, Any]:
    """The API host's view of the engine at ``address`` (state, served, late replies...)."""
    for engine in ready_body(base).get("engines", []):
        if engine["address"] == address:
            return dict(engine)
    raise LookupError(f"{address} is not among the API host's engines")


def post_in_turns(base: str, path: str, clients: int, each: int, body: dict[str, Any]) -> list[Any]:
    """``clients`` clients at once, each POSTing ``body`` ``each`` times one after the other (a
    steady load: a new request arrives as one finishes). The responses, in no particular order."""

    async def client_turns(client: httpx.AsyncClient) -> list[Any]:
        return [await client.post(path, json=body) for _ in range(each)]

    async def run() -> list[Any]:
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
            turns = await asyncio.gather(*(client_turns(client) for _ in range(clients)))
        return [response for turn in turns for response in turn]

    return asyncio.run(run())


def hosts_from_file(path: str, host: str, port: int) -> list[str]:
    """A resolver (``with_engines(resolver=partial(hosts_from_file, path))``) that answers with
    the IPs listed in ``path``, one per line: a stand-in for a headless service's DNS records,
    which the test rewrites as engines join and leave."""
    with open(path, encoding="utf-8") as listing:
        return [line.strip() for line in listing if line.strip()]
