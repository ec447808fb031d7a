"""UvicornConfig fields do what they say, in the real child: TLS, limit_max_requests,
limit_concurrency, and a bounded request_q (queue_timeout) answered with 503."""

from __future__ import annotations

import queue
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import trustme

from isolated_api.testing import running, wait_until
from tests.helpers import MainLoop, answer_upper, builder, held_until, ping_route, upper_route


def test_uvicorn_settings_ssl_serves_https(tmp_path: Path, queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    key_file, cert_file = tmp_path / "key.pem", tmp_path / "cert.pem"
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    server = (
        builder("tls")
        .routes.with_route("/upper", upper_route, methods=["POST"])
        .done()
        .uvicorn.with_ssl(str(key_file), str(cert_file))
        .done()
        .subprocess.with_ipc(*queues)
        .done()
        .build()
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with running(server):
        response = httpx.post(
            f"https://127.0.0.1:{server.port}/upper", json={"text": "tls"}, verify=context, timeout=10
        )
        assert response.status_code == 200 and response.json()["text"] == "TLS"
        try:
            httpx.get(f"http://127.0.0.1:{server.port}/upper", timeout=5)
        except httpx.HTTPError:
            pass  # plain HTTP on a TLS port is refused one way or another


def test_uvicorn_settings_limit_max_requests_ends_the_child(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    """Steps: limit_max_requests=3, send 3 requests. Expect the child to exit by itself (code 0),
    the server to report it is not running, and the exit callback to hear about it."""
    exits: list[int | None] = []
    server = (
        builder("limited")
        .routes.with_route("/ping", ping_route)
        .done()
        .uvicorn.with_limit_max_requests(3)
        .done()
        .subprocess.with_ipc(*queues)
        .done()
        .build()
    )
    server.add_child_exit_callback(lambda code, abandoned: exits.append(code))
    with running(server) as url:
        with httpx.Client(timeout=10, headers={"connection": "close"}) as client:
            for _ in range(3):
                assert client.get(f"{url}/ping").status_code == 200
        wait_until(lambda: not server.is_running, 10, "the child to exit after 3 requests")
        wait_until(lambda: exits == [0], 10, "the exit callback")


def test_uvicorn_settings_limit_concurrency_answers_503(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    """uvicorn counts connections and tasks against limit_concurrency=3: with two requests held
    (2 connections, 2 tasks), a third connection is answered 503."""
    release = threading.Event()
    main_loop.behaviour = held_until(release)
    server = (
        builder("concurrency")
        .routes.with_route("/upper", upper_route, methods=["POST"])
        .with_route("/ping", ping_route)
        .done()
        .uvicorn.with_limit_concurrency(3)
        .done()
        .subprocess.with_ipc(*queues)
        .done()
        .build()
    )
    with running(server) as url, ThreadPoolExecutor(2) as pool:
        held = [pool.submit(httpx.post, f"{url}/upper", json={"text": str(i)}, timeout=30) for i in range(2)]
        wait_until(lambda: len(main_loop.received) == 2, 20, "2 requests in the main process")
        assert httpx.get(f"{url}/ping", timeout=10).status_code == 503
        release.set()
        assert [f.result(30).status_code for f in held] == [200, 200]


def test_uvicorn_settings_full_bounded_request_queue_is_503() -> None:
    """request_q = queue.Queue(maxsize=1) that nobody reads: the first request waits in it, the
    second finds it full for longer than queue_timeout and gets 503 + Retry-After."""
    request_q: queue.Queue[Any] = queue.Queue(maxsize=1)
    response_q: queue.Queue[Any] = queue.Queue()
    server = (
        builder("bounded")
        .with_timeout(30)
        .routes.with_route("/upper", upper_route, methods=["POST"])
        .done()
        .subprocess.with_ipc(request_q, response_q)
        .with_queue_timeout(0.05)
        .done()
        .build()
    )
    with running(server) as url, ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, f"{url}/upper", json={"text": "waits"}, timeout=30)
        wait_until(request_q.full, 10, "the first request to fill the queue")
        second = httpx.post(f"{url}/upper", json={"text": "refused"}, timeout=10)
        assert second.status_code == 503 and second.headers["retry-after"] == "1"
        assert "stayed full" in second.json()["detail"]
        waiting = request_q.get()
        response_q.put(answer_upper(waiting))
        assert first.result(30).json()["text"] == "WAITS"
