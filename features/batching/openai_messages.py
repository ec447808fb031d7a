"""What crosses the queues between the HTTP worker and the models: module-level dataclasses, so the
child can unpickle them under ``spawn``. Nothing here imports FastAPI or the models."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

EMBED_MODEL = "fake-embed"
CHAT_MODEL = "fake-chat"


@dataclass(frozen=True)
class Embed:
    """One ``/v1/embeddings`` request: one batch member, however many strings it carries."""

    id: Hashable
    model: str
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class Embedded:
    vectors: list[list[float]]
    tokens: int


@dataclass(frozen=True)
class Chat:
    """One ``/v1/chat/completions`` request (streamed or not: the engine streams both)."""

    id: Hashable
    model: str
    messages: tuple[tuple[str, str], ...]  # (role, text)
    max_tokens: int | None = None


@dataclass(frozen=True)
class ChatPiece:
    """One token of a chat stream. The stream's last piece carries ``finish_reason`` and the usage."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class ListModels:
    id: Hashable


@dataclass(frozen=True)
class ModelCard:
    id: str
    created: int
    owned_by: str = "isolated_api"
