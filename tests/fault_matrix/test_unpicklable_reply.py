"""Fault matrix, issue 26 item 6: a reply that cannot be pickled.

| condition                            | before                                  | after                              |
|--------------------------------------|-----------------------------------------|------------------------------------|
| the main loop replies with an object | 500 whose detail is the pickling error  | 500 "internal error (error id …)"; |
| holding a lambda                     | ("Can't pickle local object …<lambda>") | the error logged here under its id |
| ... from another process, through a  | the same                                | the same, logged in that process   |
| ReplyBatcher                         |                                         |                                    |
"""

from __future__ import annotations

import logging
import multiprocessing
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from isolated_api import ReplyBatcher, Server
from isolated_api.testing import STOP, running, wait_until
from tests.helpers import Done, MainLoop, Work, answer_upper, builder, upper_route


def _answer(request: Work) -> Any:
    if request.text == "bad":
        return Done(request.id, lambda: None)  # type: ignore[arg-type]  # a lambda can't be pickled
    return answer_upper(request)


def _server(queues: tuple[Any, Any], name: str) -> Server:
    routes = builder(name).routes.with_route("/upper", upper_route, methods=["POST"]).done()
    return routes.subprocess.with_ipc(*queues).done().build()


def _error_id(response: httpx.Response) -> str:
    assert response.status_code == 500, response.text
    detail = response.json()["detail"]
    found = re.fullmatch(r"internal error \(error id ([0-9a-f]+)\)", detail)
    assert found is not None, detail
    return found.group(1)


def batching_main_loop(request_q: Any, response_q: Any, log_path: str) -> None:
    """A user's main loop in a process of its own, replying through a ``ReplyBatcher``."""
    logging.basicConfig(filename=log_path, level=logging.ERROR)
    with ReplyBatcher(response_q) as batcher:
        while (request := request_q.get()) != STOP:
            if isinstance(request, Work):
                batcher.put(_answer(request))


def test_unpicklable_reply_is_a_generic_500_with_an_error_id_logged_here(
    queues: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Steps: a plain main loop in this process answers "bad" with a reply holding a lambda, any
    other text as usual; POST "bad", then "good". Expected: a 500 whose detail is the generic message
    with an error id and says nothing of pickling; this process logged the pickling error under that
    id; the next request is served."""
    caplog.set_level(logging.ERROR)
    loop = MainLoop(*queues, behaviour=_answer).start()
    server = _server(queues, "unpicklable")
    try:
        with running(server) as url:
            bad = httpx.post(f"{url}/upper", json={"text": "bad"}, timeout=10)
            good = httpx.post(f"{url}/upper", json={"text": "good"}, timeout=10)
    finally:
        loop.stop()
    error_id = _error_id(bad)
    assert "pickle" not in bad.text
    logged = [r.getMessage() for r in caplog.records if error_id in r.getMessage()]
    assert any("Can't pickle local object" in message for message in logged), caplog.text
    assert good.status_code == 200 and good.json()["text"] == "GOOD"


def test_unpicklable_reply_from_another_process_is_logged_there(queues: tuple[Any, Any], tmp_path: Path) -> None:
    """Steps: the main loop runs in a spawned process and replies through a ``ReplyBatcher``; it
    answers "bad" with a reply holding a lambda. Expected: a 500 with only an error id; that
    process's log holds the id beside the pickling error; the next request is served."""
    log_path = tmp_path / "main-loop.log"
    child = multiprocessing.get_context("spawn").Process(target=batching_main_loop, args=(*queues, str(log_path)))
    child.start()
    server = _server(queues, "unpicklable-batcher")
    try:
        with running(server) as url:
            bad = httpx.post(f"{url}/upper", json={"text": "bad"}, timeout=10)
            good = httpx.post(f"{url}/upper", json={"text": "good"}, timeout=10)
    finally:
        queues[0].put(STOP)
        child.join(10)
        if child.is_alive():
            child.kill()
    error_id = _error_id(bad)
    assert "pickle" not in bad.text
    assert good.status_code == 200 and good.json()["text"] == "GOOD"
    wait_until(lambda: log_path.exists() and error_id in log_path.read_text(), 10.0, "the error id in the log")
    logged = log_path.read_text()
    assert "Can't pickle local object" in logged, logged
