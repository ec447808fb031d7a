"""The batching slice's fixtures: one OpenAI-compatible server per test module (engine in this
process, HTTP worker in a child), and ``openai`` clients pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    # Imported by the test modules, which skip without it (a conftest can't skip): see __init__.py.
    import openai

from .openai_server import ModelServer, ServeOptions


@pytest.fixture(scope="module")
def served() -> Iterator[ModelServer]:
    # The costs: 5 ms per call, 0.1 ms per embedded string, 0.05 ms per active stream.
    from .batching_clients import API_KEY

    with ModelServer(ServeOptions(api_key=API_KEY, timeout=30.0)) as server:
        yield server


@pytest.fixture
def client(served: ModelServer) -> Iterator[openai.OpenAI]:
    from .batching_clients import make_client

    with make_client(served.url) as c:
        yield c
