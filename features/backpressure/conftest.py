"""The backpressure slice's fixtures: real spawn queues (its tests start their own main loop)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from isolated_api.testing import spawn_queues


@pytest.fixture
def queues() -> Iterator[tuple[Any, Any]]:
    with spawn_queues() as pair:
        yield pair
