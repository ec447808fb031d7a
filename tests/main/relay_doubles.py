"""What the relay tests route: a message with an id, and an endpoint that records what it gets."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from isolated_api.main.relay import flatten


@dataclass
class Msg:
    id: Any
    body: str = ""
    is_final: bool = False


class Collector:
    """An endpoint: records the replies delivered to it (bundles opened, in order), the bytes
    forwarded with them, and which threads delivered them."""

    def __init__(self, name: str = "collector") -> None:
        self.name = name
        self.replies: list[Any] = []
        self.raws: list[bytes | None] = []
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def deliver(self, replies: list[Any], raws: list[bytes | None]) -> None:
        with self.lock:
            self.replies.extend(flatten(replies))
            self.raws.extend(raws)
            self.threads.add(threading.current_thread().name)
