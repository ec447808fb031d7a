"""A CORS policy checked when the server is built, so a setting browsers would refuse never
reaches production. Applied with Starlette's own ``CORSMiddleware``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from features.configuration.settings import ConfigError

_ORIGIN = re.compile(r"^https?://[^/\s?#]+$")
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
            if origin != "*" and not _ORIGIN.match(origin):
                # A trailing slash or a path never matches a browser's Origin header.
                raise ConfigError(f"CORS origin {origin!r} must look like 'https://host[:port]', with no path or slash")
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
        if isinstance(origins, str):
            origins = [origins]
        return cls(tuple(origins), bool(allow_credentials), tuple(allow_methods), tuple(allow_headers))


def apply_cors(app: FastAPI, policy: CorsPolicy) -> None:
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(policy.origins),
        allow_credentials=policy.allow_credentials,
        allow_methods=list(policy.allow_methods),
        allow_headers=list(policy.allow_headers),
    )
