"""The remote_engines slice's fixtures: a farm of engine hosts, each in a process of its own,
stopped after the test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from features.remote_engines.engine_farm import EngineFarm


@pytest.fixture
def farm() -> Iterator[EngineFarm]:
    engines = EngineFarm()
    try:
        yield engines
    finally:
        engines.stop_all()
