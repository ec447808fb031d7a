"""The remote_engines slice's fixtures: a farm of engine hosts, each in a process of its own,
stopped after the test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .engine_farm import EngineFarm


@pytest.fixture
def farm() -> Iterator[EngineFarm]:
    # Imported here: the farm needs msgspec and pyzmq, and a conftest cannot skip without them (the test
    # modules do).
    from .engine_farm import EngineFarm

    engines = EngineFarm()
    try:
        yield engines
    finally:
        engines.stop_all()
