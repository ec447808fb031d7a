"""The HTTP child's main function: logging, the channel over its private pipes, the app, uvicorn
on the listening socket the parent bound, and a lifeline that ends the child when the parent dies.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection

from isolated_api.shared.arena import ArenaHandle
from isolated_api.shared.output import configure_logging
from isolated_api.shared.spawn_payload import PickledPayload, SpawnPayload
from isolated_api.shared.spec import ServerSpec
from isolated_api.worker.app import build_app
from isolated_api.worker.channel import IPCChannel
from isolated_api.worker.drain import DrainState
from isolated_api.worker.draining_server import DrainingServer
from isolated_api.worker.health_routes import Probe
from isolated_api.worker.heap_tuning import keep_large_buffers
from isolated_api.worker.metrics_recorder import BatchingRecorder
from isolated_api.worker.metrics_routes import MetricsHooks
from isolated_api.worker.pipe_link import PipeLink
from isolated_api.worker.uvicorn_config import uvicorn_config

logger = logging.getLogger("isolated_api.child")

# After the parent dies, how long a clean shutdown may take before the child exits regardless
# (DESIGN.md invariant 4: gone within a second).
ORPHAN_EXIT_DEADLINE = 0.8
ORPHAN_EXIT_CODE = 70


def _watch_lifeline(lifeline: Connection, server: DrainingServer, finished: threading.Event) -> None:
    try:
        # Nothing is ever written: this read returns only when the parent's end closes.
        os.read(lifeline.fileno(), 1)
    except OSError:
        pass
    if finished.is_set():
        return
    logger.warning("the main process is gone; shutting down")
    server.request_exit_now()
    if not finished.wait(ORPHAN_EXIT_DEADLINE):
        os._exit(ORPHAN_EXIT_CODE)


def _reports_serving(lifeline: Connection) -> Callable[[], None]:
    """Writes one byte into the lifeline when this worker's first request is done: it tells the
    supervisor that this worker, should it die, had been serving (replace it at once), not
    crash-looping (back off)."""

    def mark() -> None:
        try:
            os.write(lifeline.fileno(), b"s")  # any byte: the main process reads one
        except OSError:  # the main process is gone; the lifeline watcher handles that
            pass

    return mark


def child_main(
    payload: SpawnPayload | PickledPayload,
    parent_fds: tuple[int, ...],
    sock: socket.socket,
    uplink: Connection,
    downlink: Connection,
    lifeline: Connection,
    arena: ArenaHandle | None = None,
) -> None:
    # Under spawn the spec arrives pickled so that unpickling it, which imports the user's
    # modules, happens after the output redirection: their import-time output lands in the log
    # file too. Under fork it is inherited as is.
    spec: ServerSpec = payload.load()
    # Under fork the child inherits the parent's ends of its pipes; holding them would hide the
    # parent's death (no end-of-file), so the child closes them first.
    for fd in parent_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    if spec.ipc.gc_threshold is not None:
        # Only the first generation: requests in flight keep their objects alive across young
        # collections, so at the default (700) each collection walks them again; see
        # DEFAULT_CHILD_GC_THRESHOLD for the figures.
        gc.set_threshold(spec.ipc.gc_threshold)
    # Large bodies' buffers are kept for the next one, not faulted in anew (heap_tuning.py).
    max_body = spec.api.uvicorn.limits.max_body_size
    keep_large_buffers(spec.ipc.max_message_size if max_body is None else max_body)
    log_config = configure_logging(spec.api.uvicorn.log_level, to_file=spec.api.log_file is not None)
    drain = DrainState(on_first_done=_reports_serving(lifeline))
    # The link's callbacks name ``server``, made below from the app the link serves: the link
    # reads its pipe only once uvicorn runs that app, after that.
    link = PipeLink(
        uplink,
        downlink,
        on_drain=lambda timeout: server.request_drain(timeout),
        on_lost=lambda reason: server.request_exit_now(),
        codec=spec.ipc.codec,
        busy_wait=spec.ipc.reply_busy_wait,
        max_frame=spec.ipc.max_message_size,
        arena=arena.attach() if arena is not None else None,
        shared_min_size=spec.ipc.shared_payloads.min_size if spec.ipc.shared_payloads is not None else 0,
    )
    probe: Probe = link.probe
    engine_metrics: Callable[[], bytes] | None = None
    if spec.engines is not None:
        # Requests go to remote engines; the pipes to this worker's main process carry the rest.
        from isolated_api.worker.engine_link import EngineLink

        engine_link = EngineLink(spec.engines, spec.ipc.codec, control_link=link)
        channel = IPCChannel(config=spec.ipc, response_timeout=spec.api.response_timeout, link=engine_link)
        probe, engine_metrics = engine_link.probe, engine_link.metrics_text
    else:
        channel = IPCChannel(config=spec.ipc, response_timeout=spec.api.response_timeout, link=link)
    recorder = BatchingRecorder(link.send_metrics, channel)

    async def render_metrics() -> bytes | None:
        # This worker's counts first, on the same pipe: the main process renders them too.
        recorder.flush()
        text = await link.scrape()
        if engine_metrics is not None and text is not None:
            text += engine_metrics()
        return text

    metrics = MetricsHooks(record=recorder.record, render=render_metrics, flush=recorder.flush)
    app = build_app(spec.recipe, channel=channel, drain=drain, probe=probe, metrics=metrics)
    port = sock.getsockname()[1]
    config = uvicorn_config(app, spec.api, log_config)
    server = DrainingServer(
        config,
        drain,
        signal_drain_timeout=spec.api.drain_timeout,
        on_started=lambda _: link.send_ready({"pid": os.getpid(), "port": port}),
        on_drain_expired=channel.stop_polling,
    )
    finished = threading.Event()
    threading.Thread(
        target=_watch_lifeline, args=(lifeline, server, finished), name="isolated-api-lifeline", daemon=True
    ).start()
    try:
        server.run(sockets=[sock])
    finally:
        finished.set()
