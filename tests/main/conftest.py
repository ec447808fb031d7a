"""Fixtures of the main-process tests (the request and response queues are the root conftest's
``queues``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from isolated_api.main.relay import Relay


@pytest.fixture
def relay(queues: tuple[Any, Any]) -> Iterator[Relay]:
    """A running ``Relay`` over ``queues`` (request_q, response_q), closed after the test."""
    running = Relay(*queues, queue_timeout=0.01)
    running.start()
    yield running
    running.close()
