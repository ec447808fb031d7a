"""Fixtures of the main-process tests."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def mp_queues() -> Iterator[tuple[Any, Any]]:
    """A request and a response ``multiprocessing.Queue`` (spawn context), closed after the test."""
    ctx = multiprocessing.get_context("spawn")
    rq, sq = ctx.Queue(), ctx.Queue()
    yield rq, sq
    for q in (rq, sq):
        q.cancel_join_thread()
        q.close()
