"""A request must carry a hashable ``.id``: without one, ``submit`` and ``submit_streaming`` raise
``TypeError`` (the documented choice) before anything reaches ``request_q``."""

from __future__ import annotations

import asyncio
import queue
from dataclasses import dataclass

import pytest

from isolated_api import IPCChannel


@dataclass
class NoId:
    text: str


@dataclass
class ListId:
    id: list[int]


def test_request_id_required_missing_or_unhashable_is_a_type_error() -> None:
    request_q: queue.Queue[object] = queue.Queue()

    async def scenario() -> None:
        channel = IPCChannel(request_q, queue.Queue())
        await channel.start_polling()
        try:
            with pytest.raises(TypeError, match=r"must have an \.id attribute; NoId has none"):
                await channel.submit(NoId("x"))
            with pytest.raises(TypeError, match="is not hashable"):
                await channel.submit(ListId([1]))
            with pytest.raises(TypeError, match=r"must have an \.id"):
                stream = channel.submit_streaming(NoId("y"))
                async for _ in stream:
                    pass
            assert channel.pending_count == 0
        finally:
            await channel.stop_polling()

    asyncio.run(scenario())
    assert request_q.empty()
