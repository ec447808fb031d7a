"""Every setting of one server, built once by ``ServerBuilder.build()`` and handed down whole: the
``Server`` reads it, the supervisor starts workers from it, and each HTTP worker receives it as its
one argument of configuration (pickled under ``spawn``, inherited under ``fork``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from isolated_api.shared.codecs import Codec, PickleCodec
from isolated_api.shared.config import (
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE,
    ApiConfig,
    IPCConfig,
    OutboxLimits,
)
from isolated_api.shared.engines import EnginesConfig
from isolated_api.shared.recipe import AppRecipe
from isolated_api.shared.restart_policy import RestartPolicy


@dataclass(frozen=True)
class ServerSpec:
    name: str
    recipe: AppRecipe
    api: ApiConfig = field(default_factory=ApiConfig)
    ipc: IPCConfig = field(default_factory=IPCConfig)
    # How messages cross between the workers and the main process.
    codec: Codec = field(default_factory=PickleCodec)
    start_method: str = "spawn"
    # None: a dead worker is not replaced.
    restart_policy: RestartPolicy | None = None
    # A CancelRequest on request_q for requests nobody waits for any more (opt-in).
    cancel_notices: bool = False
    # The HTTP worker's first garbage-collection threshold (None: the interpreter's default).
    gc_threshold: int | None = None
    startup_timeout: float = 30.0
    # How long a worker has to exit after SIGTERM before SIGKILL.
    kill_timeout: float = 2.0
    # A stop by a signal drains for this long: SIGTERM/Ctrl-C to the main process once started
    # (``stop(signal_drain_timeout)``), or a signal sent to an HTTP worker itself.
    signal_drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    # When a worker that does not read its replies counts as dead.
    outbox_limits: OutboxLimits = field(default_factory=OutboxLimits)
    # The largest frame, request or reply, on a worker's private pipes (bytes).
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    # Seconds a worker checks its pipe for the reply after sending a lone request (0: it doesn't).
    reply_busy_wait: float = 0.0
    # Remote engines (``.subprocess.with_engines``): requests go to them over ZeroMQ instead of to
    # this process's queues.
    engines: EnginesConfig | None = None
