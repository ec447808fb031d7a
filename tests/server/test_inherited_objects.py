"""Objects that multiprocessing shares with a child only by inheritance (Event, Value, Lock, Queue)
reach every HTTP worker through the app recipe, under every start method, in every worker of
``with_workers(N)`` and in a worker restarted after a crash; ``build()`` still refuses, naming the
real cause, what can't be sent at all."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest

from isolated_api import BuildError
from isolated_api.testing import loopback_builder, running, wait_until


@asynccontextmanager
async def set_flag(app: Any, flag: Any) -> AsyncIterator[None]:
    """Tells the main process that a worker is up, through an ``Event`` it created."""
    flag.set()
    yield


@asynccontextmanager
async def count_starts(app: Any, counter: Any) -> AsyncIterator[None]:
    """Counts worker start-ups in a shared ``Value``."""
    with counter.get_lock():
        counter.value += 1
    yield


@asynccontextmanager
async def hold_thread_lock(app: Any, lock: Any) -> AsyncIterator[None]:
    yield


async def ping() -> dict[str, bool]:
    return {"pong": True}


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_inherited_event_set_by_a_workers_lifespan(queues: tuple[Any, Any], method: str) -> None:
    """Steps: a lifespan holding a multiprocessing Event of the start method's context; start the
    server. Expected: build() accepts it, and the worker's lifespan sets the Event seen here."""
    ctx = multiprocessing.get_context(method)
    flag = ctx.Event()
    server = (
        loopback_builder("inherit")
        .routes.with_route("/ping", ping)
        .with_lifespan(partial(set_flag, flag=flag))
        .done()
        .subprocess.with_ipc(*queues)
        .with_start_method(method)
        .done()
        .build()
    )
    with running(server):
        assert flag.wait(10), f"the worker's lifespan did not set the Event under {method}"


def test_inherited_value_counts_every_worker_and_a_restarted_one(queues: tuple[Any, Any]) -> None:
    """Steps: 2 workers whose lifespan increments a shared Value; SIGKILL one of them with
    auto-restart on. Expected: the Value reaches 2 at start-up, then 3 once the slot is replaced."""
    counter = multiprocessing.get_context("spawn").Value("i", 0)
    server = (
        loopback_builder("inherit-value")
        .routes.with_route("/ping", ping)
        .with_lifespan(partial(count_starts, counter=counter))
        .done()
        .subprocess.with_ipc(*queues)
        .with_auto_restart(backoff=0.05)
        .done()
        .uvicorn.with_workers(2)
        .done()
        .build()
    )
    with running(server):
        wait_until(lambda: counter.value == 2, 10.0, "both workers to count their start-up")
        victim = server.processes[0]
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        wait_until(lambda: server.restart_count == 1 and counter.value == 3, 20.0, "the restarted worker to count")


def test_inherited_objects_what_cannot_be_sent_is_named_with_its_cause(queues: tuple[Any, Any]) -> None:
    """A threading lock can't reach another process by any means: build() says so, names the
    lifespan and the lock, and does not blame lambdas or closures."""
    builder = (
        loopback_builder("inherit-refused")
        .routes.with_lifespan(partial(hold_thread_lock, lock=threading.Lock()))
        .done()
        .subprocess.with_ipc(*queues)
        .done()
    )
    with pytest.raises(BuildError, match=r"lifespan .*hold_thread_lock.*_thread\.lock") as refused:
        builder.build()
    assert "lambda" not in str(refused.value)
    assert "inside the worker" in str(refused.value)


@pytest.mark.parametrize(
    ("make", "kind", "method"),
    [
        (lambda ctx: ctx.Event(), "Event", "spawn"),
        (lambda ctx: ctx.Value("i", 0), "Value", "forkserver"),
        (lambda ctx: ctx.Queue(), "Queue", "spawn"),
    ],
)
def test_inherited_objects_of_the_fork_context_name_the_factory_to_use(
    queues: tuple[Any, Any], make: Any, kind: str, method: str
) -> None:
    """Steps: a lifespan holding a multiprocessing object made by the fork context (what
    ``multiprocessing.Event()`` gives on Linux); build with workers started by ``method``.
    Expected: build() names the object's kind and the factory of the workers' context, in
    sentences that end once each."""
    builder = (
        loopback_builder("inherit-fork-context")
        .routes.with_lifespan(partial(set_flag, flag=make(multiprocessing.get_context("fork"))))
        .done()
        .subprocess.with_ipc(*queues)
        .with_start_method(method)
        .done()
    )
    with pytest.raises(BuildError) as refused:
        builder.build()
    message = str(refused.value)
    assert f"multiprocessing {kind} made by another start method's context" in message, message
    assert f"multiprocessing.get_context({method!r}).{kind}()" in message, message
    assert ".." not in message, message
