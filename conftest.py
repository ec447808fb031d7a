"""Fixtures shared by every slice: real queues, a real main-process loop, real child processes."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import MainLoop


@pytest.fixture
def queues() -> Iterator[tuple[Any, Any]]:
    ctx = multiprocessing.get_context("spawn")
    request_q, response_q = ctx.Queue(), ctx.Queue()
    yield request_q, response_q
    for q in (request_q, response_q):
        q.cancel_join_thread()
        q.close()


@pytest.fixture
def main_loop(queues: tuple[Any, Any]) -> Iterator[MainLoop]:
    loop = MainLoop(*queues).start()
    yield loop
    loop.stop()
