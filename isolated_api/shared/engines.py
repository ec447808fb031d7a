"""Remote engines: where an API host's HTTP workers send requests when the work runs on other
machines (``.subprocess.with_engines(...)``), and how they watch those engines.

An address is ``tcp://host:port`` (``host`` a name or an IP; a name is resolved again every
``resolve_interval`` seconds, and each of its addresses is one engine, so a Kubernetes headless
service lets engines join and leave) or ``ipc:///path``. Checked at ``build()``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from isolated_api.shared.config import ConfigError

# (host, port) -> the IPs it resolves to now. The default asks the system resolver; a test or a
# deployment with its own discovery passes a module-level function (it travels to each worker).
Resolver = Callable[[str, int], Sequence[str]]


@dataclass(frozen=True)
class EnginesConfig:
    """How an API host reaches its engines. Defaults suit a LAN; every value is in seconds."""

    addresses: tuple[str, ...]
    # Application pings (ZMTP heartbeats alone miss a process whose Python is hung but whose
    # libzmq thread still answers): one per engine every ``ping_interval``; an engine that has
    # not answered for ``ping_timeout`` is lost, and the requests on it end.
    ping_interval: float = 0.5
    ping_timeout: float = 2.0
    # ZMTP heartbeats on each connection: a host that vanished without closing its TCP
    # connection (power loss, a cut network) is noticed after ``heartbeat_timeout``.
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 3.0
    # DNS names in ``addresses`` are resolved again this often.
    resolve_interval: float = 10.0
    # Resend a unary request whose engine was lost before it answered, once, to another engine.
    # Off: the request may have run; only requests the user knows are idempotent may run twice.
    retry_lost: bool = False
    # Pickle over the network: whoever can reach an engine's port can make it run code (vLLM's
    # CVE-2025-30165). Refused unless the user says so.
    allow_pickle: bool = False
    # CURVE (encryption and server authentication): the engine hosts' public key (z85 text). The
    # API side makes its own key pair.
    curve_server_key: str | None = None
    resolver: Resolver | None = None

    def __post_init__(self) -> None:
        if not self.addresses:
            raise ConfigError("with_engines needs at least one address, e.g. 'tcp://gpu-1:5700'")
        for address in self.addresses:
            parse_address(address)
        if len(set(self.addresses)) != len(self.addresses):
            raise ConfigError(f"engine addresses must differ, got {list(self.addresses)}")
        for name in ("ping_interval", "ping_timeout", "heartbeat_interval", "heartbeat_timeout", "resolve_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"engine {name} must be > 0 seconds, got {value!r}")
        if self.ping_timeout <= self.ping_interval:
            raise ConfigError(
                f"engine ping_timeout ({self.ping_timeout:g} s) must be longer than ping_interval "
                f"({self.ping_interval:g} s), or every engine would be lost between two pings"
            )
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ConfigError("engine heartbeat_timeout must be longer than heartbeat_interval")
        key = self.curve_server_key
        if key is not None and (not isinstance(key, str) or len(key) != 40):
            raise ConfigError("curve_server_key must be the engine host's public key, 40 characters of z85 text")


@dataclass(frozen=True)
class Address:
    scheme: str
    host: str  # for ipc://, the path
    port: int

    @property
    def is_name(self) -> bool:
        """A DNS name (resolved, possibly to several engines), not a literal IP or a path."""
        if self.scheme != "tcp":
            return False
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return True
        return False

    def with_host(self, host: str) -> str:
        if ":" in host:  # IPv6
            return f"tcp://[{host}]:{self.port}"
        return f"tcp://{host}:{self.port}"


def parse_address(address: Any, *, allow_wildcard: bool = False) -> Address:
    """``tcp://host:port`` or ``ipc:///path``; ``ConfigError`` naming what is wrong otherwise."""
    if not isinstance(address, str):
        raise ConfigError(f"an engine address must be a string like 'tcp://gpu-1:5700', got {address!r}")
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in ("tcp", "ipc"):
        raise ConfigError(f"an engine address must start with tcp:// or ipc://, got {address!r}")
    if scheme == "ipc":
        if not rest:
            raise ConfigError(f"an ipc:// address needs a path, got {address!r}")
        return Address("ipc", rest, 0)
    host, colon, port_text = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"a tcp:// address needs a host and a port, like 'tcp://gpu-1:5700', got {address!r}")
    if host in ("*", "0.0.0.0", "::") and not allow_wildcard:
        raise ConfigError(f"{address!r} is a bind address; dial the engine host's name or IP")
    if int(port_text) == 0 and not allow_wildcard:
        raise ConfigError(f"{address!r}: port 0 is for binding; dial the port the engine host reports")
    return Address("tcp", host, int(port_text))
