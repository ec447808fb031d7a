"""Configuration dataclasses. Every value is checked when the dataclass is created, so a bad
setting fails in the caller's process with a message that names it, never later in the child."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


class ConfigError(ValueError):
    """A configuration value is invalid."""


def _int_at_least(name: str, value: object, minimum: int) -> None:
    # bool is an int subclass; `with_port(True)` is a bug, not port 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")


def _optional_int_at_least(name: str, value: object, minimum: int) -> None:
    if value is not None:
        _int_at_least(name, value, minimum)


def _number(name: str, value: object, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or math.isinf(value):
        raise ConfigError(f"{name} must be a finite number of seconds, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")
    if not positive and value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")


# The HTTP child's first garbage-collection threshold (CPython's default is 700). A request that
# awaits the main process keeps its objects (scope, coroutine frames, futures) alive across young
# collections, and each collection walks every request in flight again. The young count rises
# with allocations and falls with frees, but not below zero after a collection, so it creeps up
# faster the more requests are in flight. At 700 the work per request grew with the requests in
# flight; at 100,000 it was as with collection off (callgrind; the figures: docs/performance.md,
# "Figures behind the code"). A request here leaves no cyclic garbage (checked with
# gc.DEBUG_SAVEALL), so what a higher threshold delays is rare.
DEFAULT_CHILD_GC_THRESHOLD = 100_000


def check_gc_threshold(value: object) -> None:
    """``None`` (the interpreter's default) or an integer >= 1."""
    _optional_int_at_least("gc_threshold", value, 1)


@dataclass(frozen=True)
class OutboxLimits:
    """When an HTTP worker that does not read the replies sent to it counts as dead (logged once,
    killed, its requests ended, replaced): past ``max_queued_bytes`` queued for it in the main
    process behind the write in progress, or when its pipe took nothing for ``stall_timeout``
    seconds while something waited. The bound is checked against what already waits when a new
    write comes, so no single reply, whatever its size (up to ``max_message_size``), is ever taken
    for a stall: what is bounded is a worker that does not read while more piles up."""

    max_queued_bytes: int = 64 * 1024 * 1024
    stall_timeout: float = 20.0

    def __post_init__(self) -> None:
        _int_at_least("max_queued_bytes", self.max_queued_bytes, 1)
        _number("stall_timeout", self.stall_timeout, positive=True)


# The largest frame (a request with its body, or a reply) that crosses a worker's private pipes.
# The main process refuses a larger one from a worker as a protocol fault before buffering it, so
# each side checks its own frames before writing: a request over it is a 413, a reply a 502.
DEFAULT_MAX_MESSAGE_SIZE = 64 << 20
# Below this, the worker's own control frames (metrics reports) might not fit.
MIN_MAX_MESSAGE_SIZE = 64 << 10


def check_max_message_size(value: object) -> None:
    """An integer of bytes >= ``MIN_MAX_MESSAGE_SIZE``."""
    _int_at_least("max_message_size", value, MIN_MAX_MESSAGE_SIZE)


# How long requests in flight get when a signal stops the server (SIGTERM or Ctrl-C to the main
# process, or a signal sent to an HTTP worker itself).
DEFAULT_DRAIN_TIMEOUT = 10.0


def check_drain_timeout(value: object) -> None:
    """A finite number of seconds > 0."""
    _number("drain_timeout", value, positive=True)


# The longest reply busy wait accepted: the worker's event loop serves nothing else meanwhile.
MAX_REPLY_BUSY_WAIT = 0.01


def check_reply_busy_wait(value: object) -> None:
    """0 (off) up to ``MAX_REPLY_BUSY_WAIT`` seconds."""
    _number("reply_busy_wait", value, positive=False)
    assert isinstance(value, int | float)  # checked by _number
    if value > MAX_REPLY_BUSY_WAIT:
        raise ConfigError(
            f"reply_busy_wait must be at most {MAX_REPLY_BUSY_WAIT:g} s (the worker's event loop serves nothing "
            f"else while it waits), got {value:g}; 0.0003 covers a reply the main process sends at once"
        )


KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class RequestLimits:
    """What one request may send, and how slowly, before the HTTP worker refuses it (each refusal
    closes the connection). Defaults, and why (docs/operations.md, "Limits", has the figures):

    ``max_body_size`` (bytes, ``None``: no limit), 1 MiB: 413. nginx's ``client_max_body_size``,
    so a server behind a default nginx refuses nothing nginx would pass. A body is parsed into
    Python objects in the worker and pickled to the main process: 1 MiB of JSON can become
    tens of MB of objects. 1 MiB is ~250k tokens of prompt text; raise it for uploads.
    ``max_header_size`` (bytes of request line and headers), 32 KiB: 431 (414 for the URL alone).
    nginx's ``large_client_header_buffers 4 8k``; big cookies and tokens fit.
    ``max_headers``, 100: 431. Apache's ``LimitRequestFields``.
    ``header_timeout`` (seconds from the connection opening, or from the first byte of a request
    on a kept-alive connection, to the end of its headers), 30 s: 408 and close (closed
    silently if nothing was sent). A client sends its head in one packet; each slowloris
    connection holds a slot of ``limit_concurrency`` (and a file descriptor) this long.
    Apache's mod_reqtimeout allows 20-40 s, nginx 60 s.
    ``body_timeout`` (seconds from the end of the headers to the end of the body, ``None``: no
    limit), 60 s: 408. For the whole body, not between two reads as nginx's: a trickle of one
    byte a minute would otherwise hold a connection until ``max_body_size`` arrived.
    """

    max_body_size: int | None = 1 * MiB
    max_header_size: int = 32 * KiB
    max_headers: int = 100
    header_timeout: float = 30.0
    body_timeout: float | None = 60.0

    def __post_init__(self) -> None:
        _optional_int_at_least("max_body_size", self.max_body_size, 0)
        # A request line alone takes some room; below this every request would be refused.
        _int_at_least("max_header_size", self.max_header_size, 256)
        _int_at_least("max_headers", self.max_headers, 1)
        _number("header_timeout", self.header_timeout, positive=True)
        if self.body_timeout is not None:
            _number("body_timeout", self.body_timeout, positive=True)


@dataclass(frozen=True)
class UvicornConfig:
    """Settings handed to uvicorn in the process that serves HTTP.

    ``workers`` > 1 needs subprocess mode (see ``ServerBuilder.build``). ``limit_concurrency``
    makes uvicorn answer 503 past that many connections/tasks; ``limit_max_requests`` makes the
    serving process exit after that many requests. ``ssl_keyfile`` and ``ssl_certfile`` go together.
    """

    workers: int = 1
    timeout_keep_alive: int = 5
    limit_concurrency: int | None = None
    limit_max_requests: int | None = None
    backlog: int = 2048
    log_level: str = "warning"
    access_log: bool = False
    ssl_keyfile: str | None = None
    ssl_certfile: str | None = None
    limits: RequestLimits = field(default_factory=RequestLimits)

    def __post_init__(self) -> None:
        _int_at_least("workers", self.workers, 1)
        _number("timeout_keep_alive", self.timeout_keep_alive, positive=False)
        _optional_int_at_least("limit_concurrency", self.limit_concurrency, 1)
        _optional_int_at_least("limit_max_requests", self.limit_max_requests, 1)
        _int_at_least("backlog", self.backlog, 1)
        if not isinstance(self.log_level, str) or self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}; got {self.log_level!r}")
        # Stored lower-case: uvicorn and logging each spell levels their own way.
        object.__setattr__(self, "log_level", self.log_level.lower())
        if not isinstance(self.access_log, bool):
            raise ConfigError(f"access_log must be a bool, got {self.access_log!r}")
        if (self.ssl_keyfile is None) != (self.ssl_certfile is None):
            raise ConfigError("SSL needs both ssl_keyfile and ssl_certfile (only one was given)")
        if not isinstance(self.limits, RequestLimits):
            raise ConfigError(f"limits must be a RequestLimits, got {type(self.limits).__name__}")

    @property
    def ssl_enabled(self) -> bool:
        return self.ssl_keyfile is not None

    def check_files(self) -> None:
        """Checks that the SSL files exist; called by ``build()`` so the child never finds out."""
        for name, path in (("ssl_keyfile", self.ssl_keyfile), ("ssl_certfile", self.ssl_certfile)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{name} {path!r} does not exist or is not a file")


@dataclass(frozen=True)
class ApiConfig:
    """The HTTP API: where it listens, what its OpenAPI document says, how long a request may
    wait for the main process (``response_timeout``, seconds) and where the child logs
    (``log_file``; ``None`` keeps the child's output on the parent's terminal).

    ``port=0`` binds a free ephemeral port; ``Server.port`` tells which once started.
    """

    host: str = "0.0.0.0"
    port: int = 8000
    title: str = "API Server"
    description: str = ""
    version: str = "0.1.0"
    response_timeout: float = 60.0
    log_file: str | None = None
    uvicorn: UvicornConfig = field(default_factory=UvicornConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"host must be a non-empty string, got {self.host!r}")
        _int_at_least("port", self.port, 0)
        if self.port > 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        for name in ("title", "description", "version"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string, got {getattr(self, name)!r}")
        _number("response_timeout", self.response_timeout, positive=True)
        if self.log_file is not None and (not isinstance(self.log_file, str | Path) or not str(self.log_file)):
            raise ConfigError(f"log_file must be a path, got {self.log_file!r}")
        if not isinstance(self.uvicorn, UvicornConfig):
            raise ConfigError(f"uvicorn must be a UvicornConfig, got {type(self.uvicorn).__name__}")

    def check_log_file(self) -> None:
        """Checks that the log file can be created; called by ``build()``."""
        if self.log_file is None:
            return
        parent = Path(self.log_file).expanduser().resolve().parent
        if not parent.is_dir():
            raise ConfigError(f"log_file {self.log_file!r}: directory {str(parent)!r} does not exist")


@dataclass(frozen=True)
class IPCConfig:
    """The queue link between the HTTP child and the main process.

    ``max_pending``: requests awaiting a reply at once; one more is answered 503 + Retry-After
    without reaching the main process.
    ``queue_timeout``: how long (seconds) to wait for room when ``request_q`` is bounded
    (``Queue(maxsize=...)``) and full; after that the request fails with 503.
    ``overload_status``: the status answered past ``max_pending``: 503 (default) or 429.
    ``retry_after``: seconds sent in the ``Retry-After`` header of that answer.
    ``poll_interval``: kept for compatibility with polling designs and validated, but it has no
    effect: replies are read by one blocking reader that wakes only when a reply arrives.
    """

    poll_interval: float = 0.01
    queue_timeout: float = 0.01
    max_pending: int = 100
    overload_status: int = 503
    retry_after: int = 1

    def __post_init__(self) -> None:
        _number("poll_interval", self.poll_interval, positive=True)
        _number("queue_timeout", self.queue_timeout, positive=False)
        _int_at_least("max_pending", self.max_pending, 1)
        if self.overload_status not in (429, 503):
            raise ConfigError(f"overload_status must be 503 or 429, got {self.overload_status!r}")
        _int_at_least("retry_after", self.retry_after, 0)
