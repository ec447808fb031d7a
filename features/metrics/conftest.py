"""The metrics slice's fixtures: real ``spawn`` queues and a main loop answering as ``main_side``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from isolated_api.testing import MainLoop, spawn_queues

from .metrics import main_side


@pytest.fixture
def queues() -> Iterator[tuple[Any, Any]]:
    with spawn_queues() as pair:
        yield pair


@pytest.fixture
def main_loop(queues: tuple[Any, Any]) -> Iterator[MainLoop]:
    request_q, response_q = queues
    loop = MainLoop(request_q, response_q, main_side(response_q)).start()
    yield loop
    loop.stop()
