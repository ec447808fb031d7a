"""Config dataclasses: defaults as specified, every invalid value refused where it is set."""

from __future__ import annotations

import math
from typing import Any

import pytest

from isolated_api import ApiConfig, ConfigError, IPCConfig, UvicornConfig
from isolated_api.shared.config import RequestLimits


def test_config_defaults_match_the_specification() -> None:
    assert UvicornConfig() == UvicornConfig(
        workers=1,
        timeout_keep_alive=5,
        limit_concurrency=None,
        limit_max_requests=None,
        backlog=2048,
        log_level="warning",
        access_log=False,
        ssl_keyfile=None,
        ssl_certfile=None,
    )
    api = ApiConfig()
    assert (api.host, api.port, api.title, api.description, api.version) == (
        "0.0.0.0",
        8000,
        "API Server",
        "",
        "0.1.0",
    )
    assert (api.response_timeout, api.log_file, api.uvicorn) == (60.0, None, UvicornConfig())
    ipc = IPCConfig()
    assert (ipc.poll_interval, ipc.queue_timeout, ipc.max_pending) == (0.01, 0.01, 100)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": -1}, "port"),
        ({"port": 65536}, "port"),
        ({"port": True}, "port"),
        ({"port": "80"}, "port"),
        ({"host": ""}, "host"),
        ({"response_timeout": 0}, "response_timeout"),
        ({"response_timeout": -1.0}, "response_timeout"),
        ({"response_timeout": math.nan}, "response_timeout"),
        ({"title": 3}, "title"),
        ({"uvicorn": {}}, "UvicornConfig"),
    ],
)
def test_config_api_refuses_invalid_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ApiConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": 0}, "workers"),
        ({"timeout_keep_alive": -1}, "timeout_keep_alive"),
        ({"limit_concurrency": 0}, "limit_concurrency"),
        ({"limit_max_requests": 0}, "limit_max_requests"),
        ({"backlog": 0}, "backlog"),
        ({"log_level": "verbose"}, "log_level"),
        ({"access_log": "yes"}, "access_log"),
        ({"ssl_keyfile": "key.pem"}, "both"),
        ({"ssl_certfile": "cert.pem"}, "both"),
        ({"limits": {}}, "RequestLimits"),
    ],
)
def test_config_uvicorn_refuses_invalid_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UvicornConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"poll_interval": 0}, "poll_interval"),
        ({"queue_timeout": -0.1}, "queue_timeout"),
        ({"max_pending": 0}, "max_pending"),
        ({"max_pending": 1.5}, "max_pending"),
        ({"overload_status": 500}, "overload_status"),
        ({"retry_after": -1}, "retry_after"),
    ],
)
def test_config_ipc_refuses_invalid_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        IPCConfig(**kwargs)


def test_config_log_level_is_case_insensitive_and_ssl_pair_accepted() -> None:
    assert UvicornConfig(log_level="INFO").log_level == "info"
    assert UvicornConfig(ssl_keyfile="k", ssl_certfile="c").ssl_enabled


def test_config_is_immutable() -> None:
    config = ApiConfig()
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]


def test_config_request_limits_defaults_are_what_a_production_api_ships() -> None:
    # nginx's client_max_body_size and large_client_header_buffers; Apache's LimitRequestFields.
    assert UvicornConfig().limits == RequestLimits(
        max_body_size=1024 * 1024, max_header_size=32 * 1024, max_headers=100, header_timeout=30.0, body_timeout=60.0
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_body_size": -1}, "max_body_size"),
        ({"max_body_size": 1.5}, "max_body_size"),
        ({"max_header_size": 255}, "max_header_size"),
        ({"max_header_size": True}, "max_header_size"),
        ({"max_headers": 0}, "max_headers"),
        ({"header_timeout": 0}, "header_timeout"),
        ({"header_timeout": None}, "header_timeout"),
        ({"body_timeout": math.inf}, "body_timeout"),
        ({"body_timeout": -1}, "body_timeout"),
    ],
)
def test_config_request_limits_refuse_invalid_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RequestLimits(**kwargs)
