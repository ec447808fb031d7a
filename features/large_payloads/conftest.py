"""The large payloads slice's fixtures: a pair of real ``spawn`` queues."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from isolated_api.testing import spawn_queues


@pytest.fixture
def queues() -> Iterator[tuple[Any, Any]]:
    with spawn_queues() as pair:
        yield pair
