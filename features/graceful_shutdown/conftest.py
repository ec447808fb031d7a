"""Real queues and a real main-process loop answering this slice's requests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from isolated_api.testing import MainLoop, spawn_queues

from .shutdown_routes import answer_upper


@pytest.fixture
def queues() -> Iterator[tuple[Any, Any]]:
    with spawn_queues() as pair:
        yield pair


@pytest.fixture
def main_loop(queues: tuple[Any, Any]) -> Iterator[MainLoop]:
    loop = MainLoop(*queues, answer_upper).start()
    yield loop
    loop.stop()
