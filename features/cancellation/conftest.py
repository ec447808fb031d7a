"""The cancellation slice's fixtures: real spawn queues and a main-process loop running
``CancellableWork``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from isolated_api.testing import MainLoop, spawn_queues

from .cancellation import CancellableWork


@pytest.fixture
def queues() -> Iterator[tuple[Any, Any]]:
    with spawn_queues() as pair:
        yield pair


@pytest.fixture
def work() -> CancellableWork:
    return CancellableWork()


@pytest.fixture
def main_loop(queues: tuple[Any, Any], work: CancellableWork) -> Iterator[MainLoop]:
    loop = MainLoop(*queues, work).start()
    yield loop
    # Held computations must not outlive the test.
    work.release()
    loop.stop()
