"""A CORS policy checked when the server is built, so a setting browsers would refuse never
reaches production. Applied with Starlette's own ``CORSMiddleware``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from isolated_api.shared.config import ConfigError

_ORIGIN = re.compile(r"^https?://[^/\s?#]+$")
# What a browser puts in its Origin header: lower-case scheme and host, no default port.
_SERIALIZED_ORIGIN = re.compile(
    r"^(?P<scheme>https?)://(?P<host>[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(?P<port>[0-9]{1,5}))?$"
)
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass(frozen=True)
class CorsPolicy:
    origins: tuple[str, ...]
    allow_credentials: bool = False
    allow_methods: tuple[str, ...] = ("*",)
    allow_headers: tuple[str, ...] = ("*",)

    def __post_init__(self) -> None:
        if not self.origins:
            raise ConfigError("CORS needs at least one origin (or '*')")
        for origin in self.origins:
            if origin != "*":
                _check_origin(origin)
        if self.allow_credentials and "*" in self.origins:
            raise ConfigError(
                "CORS: allow_credentials=True with origin '*' is refused by browsers; list the allowed origins"
            )
        for method in self.allow_methods:
            if method != "*" and not _TOKEN.match(method):
                raise ConfigError(f"CORS method {method!r} is not a valid HTTP method name")
        for header in self.allow_headers:
            if header != "*" and not _TOKEN.match(header):
                raise ConfigError(f"CORS header {header!r} is not a valid header name")

    @classmethod
    def of(
        cls,
        origins: Sequence[str],
        allow_credentials: bool = False,
        allow_methods: Sequence[str] = ("*",),
        allow_headers: Sequence[str] = ("*",),
    ) -> CorsPolicy:
        return cls(_items(origins), bool(allow_credentials), _items(allow_methods), _items(allow_headers))


def _items(value: Sequence[str]) -> tuple[str, ...]:
    # A lone string is one item, not a sequence of one-letter origins, methods or headers.
    return (value,) if isinstance(value, str) else tuple(value)


def _check_origin(origin: str) -> None:
    # Starlette compares origins as plain strings: anything a browser would never send as its
    # Origin header (a path, a trailing slash, upper case, a default port, a wildcard) would
    # silently refuse every request.
    if not isinstance(origin, str) or not _ORIGIN.match(origin):
        raise ConfigError(f"CORS origin {origin!r} must look like 'https://host[:port]', with no path or slash")
    if "*" in origin:
        raise ConfigError(f"CORS origin {origin!r}: wildcards inside an origin are not supported; list each origin")
    lowered = origin.lower()
    if lowered != origin:
        raise ConfigError(f"CORS origin {origin!r}: browsers send scheme and host in lower case; use {lowered!r}")
    serialized = _SERIALIZED_ORIGIN.match(origin)
    if serialized is None:
        raise ConfigError(f"CORS origin {origin!r} must look like 'https://host[:port]', with no path or slash")
    port = serialized["port"]
    if port is not None and (int(port) > 65535 or port.startswith("0")):
        raise ConfigError(f"CORS origin {origin!r}: invalid port {port}")
    if port == _DEFAULT_PORTS[serialized["scheme"]]:
        short = origin[: -len(port) - 1]
        raise ConfigError(f"CORS origin {origin!r}: browsers leave out the default port; use {short!r}")


def apply_cors(app: FastAPI, policy: CorsPolicy) -> None:
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(policy.origins),
        allow_credentials=policy.allow_credentials,
        allow_methods=list(policy.allow_methods),
        allow_headers=list(policy.allow_headers),
    )
