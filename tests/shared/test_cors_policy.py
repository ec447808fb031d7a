"""CorsPolicy, the validated CORS settings behind ``with_cors``: what it accepts and refuses, checked
without a child. (The CORS behaviour over real HTTP is the cors_middleware slice's.)"""

from __future__ import annotations

from typing import Any

import pytest

from isolated_api import ConfigError
from isolated_api.shared.cors import CorsPolicy

ALLOWED = "https://app.example"


def test_cors_policy_credentials_with_any_origin_is_refused() -> None:
    with pytest.raises(ConfigError, match="allow_credentials"):
        CorsPolicy.of([ALLOWED, "*"], allow_credentials=True)


def test_cors_policy_accepts_what_browsers_send() -> None:
    origins = ["https://app.example", "http://localhost:3000", "http://127.0.0.1:8080", "http://[::1]:8000"]
    policy = CorsPolicy.of(origins, allow_credentials=True, allow_methods=["GET", "PATCH"], allow_headers=["x-token"])
    assert policy == CorsPolicy(tuple(origins), True, ("GET", "PATCH"), ("x-token",))
    assert CorsPolicy.of("*") == CorsPolicy(("*",))


def test_cors_policy_a_lone_string_is_one_item() -> None:
    policy = CorsPolicy.of(ALLOWED, allow_methods="GET", allow_headers="x-token")
    assert (policy.origins, policy.allow_methods, policy.allow_headers) == ((ALLOWED,), ("GET",), ("x-token",))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"origins": []}, "at least one origin"),
        ({"allow_methods": ["GET POST"]}, "method 'GET POST'"),
        ({"allow_headers": ["x token"]}, "header 'x token'"),
        ({"allow_headers": ["x-token:"]}, "header 'x-token:'"),
    ],
)
def test_cors_policy_refuses_invalid_settings(changes: dict[str, Any], message: str) -> None:
    settings: dict[str, Any] = {"origins": [ALLOWED], **changes}
    with pytest.raises(ConfigError, match=message):
        CorsPolicy.of(**settings)
