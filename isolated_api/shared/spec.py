"""Every setting of one server, built once by ``ServerBuilder.build()`` and handed down whole: the
``Server`` reads it, the supervisor starts workers from it, and each HTTP worker receives it as its
one argument of configuration (pickled under ``spawn``, inherited under ``fork``).

Each section is checked on its own when its dataclass is made (``shared/config.py``); the rules
that join two sections are checked here, once, when the spec is made, each as a
``ConflictingSettingsError`` naming both settings and how to settle it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from isolated_api.shared.codecs import Codec, PickleCodec
from isolated_api.shared.config import ApiConfig, ConfigError, IPCConfig
from isolated_api.shared.engines import EnginesConfig
from isolated_api.shared.recipe import AppRecipe, BuildError
from isolated_api.shared.restart_policy import RestartPolicy
from isolated_api.shared.spawn_payload import check_sendable


class ConflictingSettingsError(ConfigError, BuildError):
    """Two settings, each valid alone, that cannot go together. A ``ConfigError``, and a
    ``BuildError`` as ``build()`` raised for these before they were the spec's rules."""


@dataclass(frozen=True)
class ServerSpec:
    name: str
    recipe: AppRecipe
    api: ApiConfig = field(default_factory=ApiConfig)
    ipc: IPCConfig = field(default_factory=IPCConfig)
    # Requests go to the caller's request_q/response_q (``.subprocess.with_ipc``).
    queues: bool = False
    # Remote engines (``.engines.with_engines``): requests go to them over ZeroMQ instead.
    engines: EnginesConfig | None = None
    startup_timeout: float = 30.0
    # How long a worker has to exit after SIGTERM before SIGKILL.
    kill_timeout: float = 2.0

    def __post_init__(self) -> None:
        for problem in _conflicts(self):
            raise ConflictingSettingsError(problem)

    @property
    def subprocess_mode(self) -> bool:
        """The HTTP API runs in worker processes (with queues or remote engines)."""
        return self.queues or self.engines is not None

    # Views of ``ipc`` for the main-process side, which read them here before the settings had
    # one home: not a second place to set them.
    @property
    def codec(self) -> Codec:
        return self.ipc.codec

    @property
    def start_method(self) -> str:
        return self.ipc.start_method

    @property
    def restart_policy(self) -> RestartPolicy | None:
        return self.ipc.restart_policy


def _conflicts(spec: ServerSpec) -> Iterator[str]:
    """Each rule that joins two settings, as the message for the first that is broken."""
    api, ipc, engines = spec.api, spec.ipc, spec.engines
    if engines is not None and spec.queues:
        yield (
            "with_ipc and with_engines both given (IPC queues and EnginesConfig.addresses): requests go either to "
            "this process's queues or to remote engines; keep one (an engine's own machine runs EngineHost over "
            "its queues)"
        )
    if engines is not None and ipc.reply_busy_wait:
        yield (
            "with_reply_busy_wait applies to the pipes of with_ipc (IPCConfig.reply_busy_wait="
            f"{ipc.reply_busy_wait:g}); with remote engines (EnginesConfig) the replies come over ZeroMQ and it "
            "would do nothing: drop one of the two"
        )
    if engines is not None and isinstance(ipc.codec, PickleCodec) and not engines.allow_pickle:
        yield (
            "remote engines with the pickle codec (IPCConfig.codec is PickleCodec, EnginesConfig.allow_pickle is "
            "False): an engine would unpickle what the network sends, and unpickling runs code (vLLM's "
            "CVE-2025-30165). Use .with_codec(MsgspecCodec(*your_types)), or pass with_engines(..., "
            "allow_pickle=True) if only trusted hosts share the network"
        )
    if engines is not None and engines.resolver is not None and ipc.start_method != "fork":
        try:
            # Pickled as each worker starts, like the recipe's parts: checked the same way.
            check_sendable(engines.resolver)
        except Exception as exc:
            yield (
                f"EnginesConfig.resolver {engines.resolver!r} cannot be sent to the HTTP worker processes started "
                f"with IPCConfig.start_method={ipc.start_method!r} ({exc}); define it at module level"
            )
    if not spec.subprocess_mode and api.uvicorn.workers > 1:
        yield (
            f"UvicornConfig.workers={api.uvicorn.workers} needs subprocess mode: add "
            ".subprocess.with_ipc(request_q, response_q) and the server runs that many HTTP worker processes on "
            "one port, all linked to this process"
        )
    if not spec.subprocess_mode and api.log_file is not None:
        yield (
            "ApiConfig.log_file isolates the HTTP child's output; it needs subprocess mode (.subprocess.with_ipc). "
            "In direct mode uvicorn logs through this process's logging"
        )
    body_limit = api.uvicorn.limits.max_body_size
    if spec.subprocess_mode and body_limit is not None and body_limit > ipc.max_message_size:
        # A body the worker lets in but could never send: refused here rather than with a 413
        # that contradicts the configured limit.
        yield (
            f"RequestLimits.max_body_size ({body_limit} bytes) is over IPCConfig.max_message_size "
            f"({ipc.max_message_size} bytes), the largest request a worker may send to the main process: raise "
            "it too, .subprocess.with_max_message_size(...), or lower the body limit"
        )
