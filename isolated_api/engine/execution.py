"""Running one handler for one job, by kind, and turning its outcome into messages.

- Sync functions and generator functions run in a worker thread of a bounded pool, which also puts
  their replies and chunks on response_q: a stream costs no engine-loop wake-up per chunk.
- ``async def`` handlers and async generators run on the engine's loop.
- A generator's items go out at once as ``StreamChunk(is_final=False)``; when it ends, one more
  chunk with ``is_final=True`` closes the stream (see ``StreamChunk``). Holding each item back
  until the next one exists would delay every token by one.
- ``EngineError`` -> ``ErrorReply`` with its status and message; any other exception -> a 500 whose
  message is generic with an error id, the traceback logged here under that id: an exception's
  text (a path, a key, a query) is for the operator, never for the client.
  Cancellation sends nothing: ``Job`` refuses messages once it is cancelled.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncGenerator, Generator
from concurrent.futures import Executor
from typing import Any

from isolated_api.engine.errors import EngineError
from isolated_api.engine.handlers import Handler, Kind
from isolated_api.engine.job import Job
from isolated_api.engine.messages import Result, StreamChunk
from isolated_api.shared.messages import ErrorReply, internal_error

logger = logging.getLogger("isolated_api.engine")


def error_reply(job: Job, handler: Handler, exc: BaseException) -> ErrorReply:
    if isinstance(exc, EngineError):
        return ErrorReply(job.id, exc.message, exc.status_code)
    reply, error_id = internal_error(job.id)
    logger.error("handler %s failed on request %r (error id %s)", handler.name, job.id, error_id, exc_info=exc)
    return reply


def _call(handler: Handler, job: Job) -> Any:
    if handler.takes_context:
        return handler.fn(job.request, job.context)
    return handler.fn(job.request)


def _run_in_thread(handler: Handler, job: Job) -> bool:
    """Runs a sync handler to the end in this worker thread. Returns True if it failed."""
    try:
        result = _call(handler, job)
        if inspect.isawaitable(result) or inspect.isasyncgen(result):
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError(f"handler {handler.name} returned {type(result).__name__}: declare it 'async def'")
        if inspect.isgenerator(result):
            _stream_generator(result, job)
        else:
            job.send(Result(job.id, result), final=True)
        return False
    except Exception as exc:
        job.send(error_reply(job, handler, exc), final=True)
        return True


def _stream_generator(generator: Generator[Any, Any, Any], job: Job) -> None:
    context = job.context
    try:
        while True:
            try:
                item = next(generator)
            except StopIteration as end:
                job.send(StreamChunk(job.id, end.value, True), final=True)
                return
            if context.cancelled or not job.send(StreamChunk(job.id, item, False), final=False):
                return
    finally:
        generator.close()  # runs the generator's own finally blocks when it stopped early


async def _stream_async_generator(generator: AsyncGenerator[Any, None], job: Job) -> None:
    try:
        async for item in generator:
            if not job.send(StreamChunk(job.id, item, False), final=False):
                return
        job.send(StreamChunk(job.id, None, True), final=True)
    finally:
        await generator.aclose()


async def run_job(handler: Handler, job: Job, pool: Executor) -> bool:
    """Runs ``handler`` for ``job``; returns True if the handler failed. Cancellation propagates."""
    if handler.kind is Kind.SYNC:
        job.in_thread = True
        loop = asyncio.get_running_loop()
        failed: bool = await loop.run_in_executor(pool, _run_in_thread, handler, job)
        return failed
    try:
        if handler.kind is Kind.ASYNC_GEN:
            await _stream_async_generator(_call(handler, job), job)
        else:
            job.send(Result(job.id, await _call(handler, job)), final=True)
        return False
    except Exception as exc:
        job.send(error_reply(job, handler, exc), final=True)
        return True
