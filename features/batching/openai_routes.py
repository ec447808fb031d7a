"""The HTTP side, in the worker process: OpenAI's request and response shapes, the API-key
dependency, and errors in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``).

Every route hands its request to the main process and waits: the models, and the list of them,
live there. A chat completion is a stream in the engine whether or not the client asked for one;
the non-streaming route reads the whole stream and answers once.
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
import json
import struct
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import Header
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from isolated_api import IPC, IPCError, StreamChunk, new_request_id, sse_response

from .openai_messages import Chat, ChatPiece, Embed, Embedded, ListModels, ModelCard

# -- errors in OpenAI's shape ---------------------------------------------------------------------

# What OpenAI's API says in "type" for a status; clients (the openai package) pick their exception
# class by the status alone.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_ERROR_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded", 503: "overloaded"}


def openai_error(
    status: int, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    error = {
        "message": message,
        "type": _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
        "param": param,
        "code": _ERROR_CODES.get(status),
    }
    return JSONResponse({"error": error}, status_code=status, headers=headers)


class OpenAIError(Exception):
    """Raised in a route or dependency: the client gets ``status`` with ``message`` in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


async def openai_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OpenAIError)
    return openai_error(exc.status, exc.message, param=exc.param)


async def ipc_error_response(request: Request, exc: Exception) -> Response:
    # The library's statuses (503 + Retry-After when overloaded, 504, the engine's EngineError
    # status...) kept as they are, with their headers; only the body takes OpenAI's shape.
    assert isinstance(exc, IPCError)
    return openai_error(exc.status_code, exc.message, headers=exc.headers or None)


async def http_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return openai_error(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}) or None)


async def validation_error_response(request: Request, exc: Exception) -> Response:
    # 422 as the rest of the house answers an invalid body; the message names each field and what
    # was wrong, never echoes the input (a 50 MB body must not come back).
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors[:5]]
    if len(errors) > 5:
        parts.append(f"{len(errors) - 5} more errors")
    return openai_error(422, "; ".join(parts)[:2000])


EXCEPTION_HANDLERS: list[tuple[type[Exception], Any]] = [
    (OpenAIError, openai_error_response),
    (IPCError, ipc_error_response),
    (HTTPException, http_error_response),
    (RequestValidationError, validation_error_response),
]

# -- the API key ----------------------------------------------------------------------------------


class ApiKeyCheck:
    """A FastAPI dependency (``Depends(ApiKeyCheck(key))``): ``Authorization: Bearer <key>`` or 401.
    An instance, not a closure, so the route's recipe pickles for the worker process."""

    def __init__(self, api_key: str) -> None:
        if not api_key:
            raise ValueError("the API key must not be empty")
        self._key = api_key.encode()

    async def __call__(self, authorization: Annotated[str | None, Header()] = None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        # compare_digest: the time taken says nothing about how much of the key was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._key):
            message = "Missing bearer API key." if not authorization else "Incorrect API key provided."
            raise OpenAIError(401, message)


# -- GET /v1/models -------------------------------------------------------------------------------


def _card(card: ModelCard) -> dict[str, Any]:
    return {"id": card.id, "object": "model", "created": card.created, "owned_by": card.owned_by}


async def models_route(channel: IPC) -> dict[str, Any]:
    reply = await channel.submit(ListModels(new_request_id()))
    return {"object": "list", "data": [_card(card) for card in reply.data]}


# -- POST /v1/embeddings --------------------------------------------------------------------------


class EmbeddingsBody(BaseModel):
    model: str
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


def _encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    # OpenAI's base64: the float32 values, little-endian, back to back.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def embeddings_route(body: EmbeddingsBody, channel: IPC) -> dict[str, Any]:
    inputs = (body.input,) if isinstance(body.input, str) else tuple(body.input)
    reply = await channel.submit(Embed(new_request_id(), body.model, inputs))
    embedded: Embedded = reply.data
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": _encode_vector(vector, body.encoding_format)}
            for index, vector in enumerate(embedded.vectors)
        ],
        "model": body.model,
        "usage": {"prompt_tokens": embedded.tokens, "total_tokens": embedded.tokens},
    }


# -- POST /v1/chat/completions --------------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"] = "text"
    text: str


class MessageBody(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return " ".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatBody(BaseModel):
    model: str
    messages: list[MessageBody] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None


def _usage(piece: ChatPiece) -> dict[str, int]:
    return {
        "prompt_tokens": piece.prompt_tokens,
        "completion_tokens": piece.completion_tokens,
        "total_tokens": piece.prompt_tokens + piece.completion_tokens,
    }


def merge_pieces(older: StreamChunk, newer: StreamChunk) -> StreamChunk:
    """The ``merge`` for a slow client: tokens it has not read yet fold into one chunk, text intact,
    the newer chunk's finish reason and usage kept."""
    text = older.data.text + newer.data.text
    return StreamChunk(newer.id, dataclasses.replace(newer.data, text=text), newer.is_final)


class ChunkEncoder:
    """``encode`` for ``sse_response``: each chunk as a ``chat.completion.chunk``. The first one
    carries the assistant's role; the last one the finish reason (and the usage, if asked for)."""

    def __init__(self, completion_id: str, model: str, include_usage: bool) -> None:
        self.base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        self.include_usage = include_usage
        self.first = True

    def __call__(self, chunk: StreamChunk) -> str:
        piece: ChatPiece = chunk.data
        delta: dict[str, str] = {"content": piece.text} if piece.text or self.first else {}
        if self.first:
            delta["role"] = "assistant"
            self.first = False
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": piece.finish_reason}
        frame: dict[str, Any] = {**self.base, "choices": [choice]}
        if self.include_usage and piece.finish_reason is not None:
            # OpenAI sends the usage in one more chunk with no choices; here it rides on the last
            # one (the same field of the same chunk type): one engine chunk, one SSE frame.
            frame["usage"] = _usage(piece)
        return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def _chat(body: ChatBody) -> Chat:
    messages = tuple((m.role, m.text()) for m in body.messages)
    limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    return Chat(new_request_id(), body.model, messages, limit)


async def chat_route(body: ChatBody, request: Request, channel: IPC) -> Any:
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        stream = channel.submit_streaming(_chat(body), merge=merge_pieces)
        encoder = ChunkEncoder(completion_id, body.model, include_usage)
        return await sse_response(stream, encoder, done="[DONE]", request=request)
    texts: list[str] = []
    last = ChatPiece("")
    async for chunk in channel.submit_streaming(_chat(body), merge=merge_pieces):
        if chunk.data is not None:
            last = chunk.data
            texts.append(last.text)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(texts)},
                "logprobs": None,
                "finish_reason": last.finish_reason or "stop",
            }
        ],
        "usage": _usage(last),
    }
