"""The fake models, run in the main process. Their cost is per call, as a GPU forward pass's is:
``FakeDevice.run(items)`` holds one lock (one call at a time, like one GPU) and sleeps
``call_seconds + items * item_seconds``. ``time.sleep`` releases the GIL, so the HTTP side and the
engine's own threads run meanwhile, as they would beside a real accelerator.

``FakeEmbedder`` is an ``Engine.batch`` handler (a list of requests in, one item per request out);
``FakeChat`` is an ``Engine.steps`` stepper (``join``, ``step``, ``leave``)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from isolated_api import Done, EngineError

from .openai_messages import CHAT_MODEL, EMBED_MODEL, Chat, ChatPiece, Embed, Embedded, ListModels, ModelCard

EMBED_DIMENSION = 32


class FakeDevice:
    """One accelerator: ``run`` waits for the lock, then costs ``call_seconds`` plus ``item_seconds``
    per item. Counts calls, items and the seconds it was busy."""

    def __init__(self, call_seconds: float = 0.005, item_seconds: float = 0.0001) -> None:
        if call_seconds < 0 or item_seconds < 0:
            raise ValueError(f"costs must be >= 0, got {call_seconds} and {item_seconds}")
        self.call_seconds = call_seconds
        self.item_seconds = item_seconds
        self._lock = threading.Lock()
        self.calls = 0
        self.items = 0
        self.busy_seconds = 0.0

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Holds the device, as a long call would: every ``run`` waits until the block ends."""
        with self._lock:
            yield

    def run(self, items: int) -> None:
        with self._lock:
            started = time.perf_counter()
            cost = self.call_seconds + items * self.item_seconds
            if cost:
                time.sleep(cost)
            self.calls += 1
            self.items += items
            self.busy_seconds += time.perf_counter() - started


def words(text: str) -> list[str]:
    """The fake tokenizer: one token per whitespace-separated word."""
    return text.split()


def fake_embedding(text: str, dimension: int = EMBED_DIMENSION) -> list[float]:
    """A deterministic vector per string; different strings give different vectors (a hash of the
    text). Each value is a multiple of 1/128 in [-1, 1), so it survives float32 (base64) exactly."""
    return [(byte - 128) / 128 for byte in hashlib.shake_256(text.encode()).digest(dimension)]


class FakeEmbedder:
    """``fake-embed`` as an ``Engine.batch`` handler: one device call for the whole batch, one item
    per request in the batch's order. A request for another model fails alone (404), the rest of
    its batch is served. ``batch_sizes`` counts the calls by how many requests each one served."""

    def __init__(self, device: FakeDevice, dimension: int = EMBED_DIMENSION) -> None:
        self.device = device
        self.dimension = dimension
        self.batch_sizes: Counter[int] = Counter()
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        return sum(self.batch_sizes.values())

    def __call__(self, requests: list[Embed]) -> list[Any]:
        served = [r for r in requests if r.model == EMBED_MODEL]
        if served:
            self.device.run(sum(len(r.inputs) for r in served))
            with self._lock:
                self.batch_sizes[len(served)] += 1
        return [self._answer(r) for r in requests]

    def _answer(self, request: Embed) -> Any:
        if request.model != EMBED_MODEL:
            return model_not_found(request.model)
        vectors = [fake_embedding(text, self.dimension) for text in request.inputs]
        return Embedded(vectors, sum(len(words(text)) for text in request.inputs))


@dataclass
class _Decoding:
    answer: list[str]
    limit: int | None
    prompt_tokens: int
    produced: int = 0


class FakeChat:
    """``fake-chat`` as an ``Engine.steps`` stepper: it answers with the words of the last user
    message, one word per step. Each step is one device call over every active stream (cost
    ``call_seconds + item_seconds`` per active stream). ``left`` counts the streams that left, by
    why; ``max_active_seen`` is the most streams one step served."""

    def __init__(self, device: FakeDevice) -> None:
        self.device = device
        self.left: Counter[str] = Counter()
        self.joined = 0
        self.max_active_seen = 0
        # join/step/leave may run in different worker threads: one lock over the streams' state.
        self._lock = threading.Lock()
        self._streams: dict[Hashable, _Decoding] = {}

    def join(self, requests: list[Chat]) -> None:
        # The "prefill": tokenize each newcomer's prompt. Free here; a real model would batch it too.
        with self._lock:
            for request in requests:
                user = [text for role, text in request.messages if role == "user"]
                prompt_tokens = sum(len(words(text)) for _, text in request.messages)
                self._streams[request.id] = _Decoding(
                    words(user[-1]) if user else [], request.max_tokens, prompt_tokens
                )
                self.joined += 1

    def step(self, active: list[Chat]) -> list[Any]:
        served = [r for r in active if r.model == CHAT_MODEL]
        if served:
            self.device.run(len(served))
        with self._lock:
            self.max_active_seen = max(self.max_active_seen, len(active))
            return [self._next(r) if r.model == CHAT_MODEL else model_not_found(r.model) for r in active]

    def leave(self, request: Chat, why: str) -> None:
        with self._lock:
            self._streams.pop(request.id, None)
            self.left[why] += 1

    def _next(self, request: Chat) -> Any:
        stream = self._streams[request.id]
        if not stream.answer:
            return Done(ChatPiece("", "stop", stream.prompt_tokens, 0))
        word = stream.answer[stream.produced]
        text = word if stream.produced == 0 else f" {word}"
        stream.produced += 1
        if stream.produced == len(stream.answer):
            finish: str | None = "stop"
        elif stream.limit is not None and stream.produced >= stream.limit:
            finish = "length"
        else:
            return ChatPiece(text)
        return Done(ChatPiece(text, finish, stream.prompt_tokens, stream.produced))


def model_not_found(model: str) -> EngineError:
    return EngineError(f"The model `{model}` does not exist or you do not have access to it.", 404)


class Catalog:
    """``GET /v1/models``: the models this process serves (an ``Engine.handle`` handler)."""

    def __init__(self) -> None:
        created = int(time.time())
        self.cards = [ModelCard(EMBED_MODEL, created), ModelCard(CHAT_MODEL, created)]

    def __call__(self, request: ListModels) -> list[ModelCard]:
        return self.cards
