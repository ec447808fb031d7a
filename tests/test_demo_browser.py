"""The demo's page (GET /) in headless Chromium, driven over the Chrome DevTools Protocol: a user
types a prompt, presses Stream, and watches the tokens arrive. Needs Debian's ``chromium`` package
(``.ci/run`` installs it); skipped without it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from isolated_api.testing import pid_alive, wait_until
from tests.test_examples import DemoProcess

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(
        "headless browser test: no chromium on PATH or at /usr/bin/chromium "
        "(Debian: apt-get install chromium; .ci/run installs it)",
        allow_module_level=True,
    )

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",  # Chromium writes the port it chose to DevToolsActivePort
]
TOKEN_DELAY = 0.12  # seconds between tokens: the stream takes ~1.6 s, long enough to be watched
PROMPT = "fourteen thirteen twelve eleven ten nine eight seven six five four three two one"
EXPECTED = PROMPT.split()[::-1]  # the demo's engine gives the prompt's words back reversed


class DevTools:
    """A minimal Chrome DevTools Protocol client: one browser websocket, flat sessions."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._last_id = 0

    def call(self, method: str, session: str | None = None, timeout: float = 10.0, **params: Any) -> dict[str, Any]:
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            # Events (no "id") and nothing else arrive in between; the answer carries our id.
            reply = json.loads(self._ws.recv(timeout=max(0.0, deadline - time.monotonic())))
            if reply.get("id") == self._last_id:
                break
        assert "error" not in reply, f"{method}: {reply['error']}"
        result: dict[str, Any] = reply["result"]
        return result

    def evaluate(self, session: str, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", session, expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, f"{expression}: {result['exceptionDetails']}"
        return result["result"].get("value")


@contextmanager
def chromium(profile: Path) -> Iterator[DevTools]:
    """Headless Chromium with a fresh profile in ``profile``; yields a DevTools client of the browser."""
    log = (profile.parent / "chromium.log").open("wb")
    process = subprocess.Popen(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its renderer and helper processes share our group: stopped together
    )
    try:
        active_port = profile / "DevToolsActivePort"

        def listening() -> bool:
            assert process.poll() is None, f"chromium exited {process.returncode}: see {log.name}"
            return len(active_port.read_text().splitlines()) >= 2 if active_port.exists() else False

        wait_until(listening, 30.0, "chromium's DevTools endpoint")
        port, path = active_port.read_text().splitlines()[:2]
        with connect(f"ws://127.0.0.1:{port}{path}", open_timeout=10, max_size=None, proxy=None) as ws:
            yield DevTools(ws)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        log.close()


# What the page shows: its status line and one span per token (index, text, ms after the request began).
SNAPSHOT = """({
    state: document.getElementById("status").dataset.state,
    status: document.getElementById("status").textContent,
    tokens: [...document.querySelectorAll("#output .token")].map(
        (s) => [Number(s.dataset.index), s.textContent, Number(s.dataset.ms)]),
    text: document.getElementById("output").textContent,
})"""


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoProcess]:
    with DemoProcess("--token-delay", str(TOKEN_DELAY)) as process:
        yield process


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    with chromium(tmp_path_factory.mktemp("chromium") / "profile") as devtools:
        yield devtools


def open_page(browser: DevTools, url: str) -> str:
    """Opens ``url`` in a new tab; returns its DevTools session once the page's script is ready."""
    target = browser.call("Target.createTarget", url=url)["targetId"]
    session: str = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    wait_until(
        lambda: browser.evaluate(session, "document.readyState === 'complete' && !!window.stream"),
        30.0,
        "the demo page to load",
    )
    return session


def start_stream(browser: DevTools, session: str, prompt: str) -> None:
    """Types ``prompt`` and presses Stream, as a user would."""
    script = f"""document.getElementById("prompt").value = {json.dumps(prompt)};
        document.getElementById("generate").click();"""
    browser.evaluate(session, script)


def test_demo_browser_page_shows_streamed_tokens_in_order_as_they_arrive(demo: DemoProcess, browser: DevTools) -> None:
    """Steps: with demo.py running (a token every 0.12 s), open its page in headless Chromium; type
    a 14-word prompt and press Stream; read the page every few ms until it says done.
    Expect: every read shows a prefix of the answer, in order; at least one read shows some tokens
    but not all (the page is filled while the stream runs, not at its end); the page timed the
    last token at least half the engine's pacing after the first; the whole text in the end."""
    session = open_page(browser, f"{demo.url}/")
    start_stream(browser, session, PROMPT)
    snapshots: list[dict[str, Any]] = []

    def finished() -> bool:
        snapshots.append(browser.evaluate(session, SNAPSHOT))
        return snapshots[-1]["state"] in ("done", "error", "stopped")

    wait_until(finished, 30.0, "the page to finish streaming")

    final = snapshots[-1]
    assert final["state"] == "done", final["status"]
    tokens = final["tokens"]
    assert [index for index, _, _ in tokens] == list(range(len(EXPECTED))), tokens
    assert [text.strip() for _, text, _ in tokens] == EXPECTED
    assert final["text"] == " ".join(EXPECTED)
    for snapshot in snapshots:
        assert snapshot["tokens"] == tokens[: len(snapshot["tokens"])], "tokens out of order or changed"
    partial = [len(s["tokens"]) for s in snapshots if 0 < len(s["tokens"]) < len(EXPECTED)]
    assert partial, f"never saw the page part-way through: {[len(s['tokens']) for s in snapshots]}"
    shown_ms = [ms for _, _, ms in tokens]
    assert shown_ms == sorted(shown_ms)
    pacing_ms = (len(EXPECTED) - 1) * TOKEN_DELAY * 1000
    assert shown_ms[-1] - shown_ms[0] >= pacing_ms / 2, f"tokens shown at {shown_ms} ms: not as they arrived"


def test_demo_browser_stop_button_ends_the_generation_in_the_main_process(demo: DemoProcess, browser: DevTools) -> None:
    """Steps: with demo.py running, open its page; stream a 40-word prompt (5 s at the demo's
    pace); once 2 tokens are shown, press Stop. Expect the page to say "stopped" with fewer than
    40 tokens, and the main process to print that it cancelled that request."""
    words = 40  # under the page's default max tokens (64)
    session = open_page(browser, f"{demo.url}/")
    start_stream(browser, session, " ".join(f"w{i}" for i in range(words)))
    count = "document.querySelectorAll('#output .token').length"
    wait_until(lambda: browser.evaluate(session, count) >= 2, 30.0, "two tokens on the page")
    browser.evaluate(session, 'document.getElementById("stop").click()')
    state = 'document.getElementById("status").dataset.state'
    wait_until(lambda: browser.evaluate(session, state) == "stopped", 10.0, "the page to stop")
    shown = browser.evaluate(session, count)
    assert 2 <= shown < words
    assert browser.evaluate(session, 'document.getElementById("status").textContent') == f"stopped after {shown} tokens"
    cancelled = demo.wait_for_line(rf"main: request \w+ cancelled after (\d+) of {words} tokens$", timeout=20)
    assert int(cancelled[1]) < words


# The live facts the page shows (polled once a second from /health/ready, /metrics and /v1/stats).
FACTS = """({
    pid: document.getElementById("worker-pid").textContent,
    worker: document.getElementById("worker-state").dataset.state,
    pending: document.getElementById("pending").textContent,
    restarts: document.getElementById("restarts").textContent,
    rate: document.getElementById("tokens-per-second").textContent,
    mainPid: document.getElementById("main-pid").textContent,
    total: document.getElementById("tokens-total").textContent,
    events: document.getElementById("events").textContent,
})"""


def test_demo_browser_kill_button_breaks_the_stream_restarts_the_worker_and_the_count_survives(
    browser: DevTools,
) -> None:
    """Steps: start demo.py of its own (a token every 0.12 s), open its page; check the live facts
    (the worker's and the main process's pids, pending 0, restarts 0, 0 tokens); stream a 60-word
    prompt (7 s) and wait for pending >= 1 and tokens/s > 0; then press "Kill the HTTP worker".
    Expect: the page says the stream broke with fewer than 60 tokens; the main process printed
    that it SIGKILLed that pid; the old pid dies and the page shows a new, live worker pid within
    20 s, ready, with restarts 1; the main process's count is not reset (what it printed it
    generated, at least what was shown before the kill); a 14-word stream on the new worker ends
    with the whole text and the count grows by exactly 14."""
    words = 60  # under the page's default max tokens (64)
    with DemoProcess("--token-delay", str(TOKEN_DELAY)) as demo:
        session = open_page(browser, f"{demo.url}/")

        def facts() -> dict[str, Any]:
            value: dict[str, Any] = browser.evaluate(session, FACTS)
            return value

        wait_until(lambda: facts()["total"] == "0", 30.0, "the page's first facts")
        before = facts()
        assert (before["pid"], before["worker"]) == (str(demo.child_pid), "ready"), before
        assert (before["pending"], before["restarts"], before["mainPid"]) == ("0", "0", str(demo.pid)), before

        start_stream(browser, session, " ".join(f"w{i}" for i in range(words)))
        wait_until(lambda: int(facts()["pending"]) >= 1, 20.0, "pending >= 1 while the stream runs")
        wait_until(lambda: float(facts()["rate"].replace("?", "0")) > 0, 20.0, "tokens/s > 0 while streaming")
        shown_before_kill = browser.evaluate(session, "document.querySelectorAll('#output .token').length")
        total_before_kill = int(facts()["total"])
        assert browser.evaluate(session, 'document.getElementById("status").dataset.state') == "streaming"

        killed_at = time.monotonic()
        browser.evaluate(session, 'document.getElementById("kill").click()')
        demo.wait_for_line(rf"main: SIGKILL to HTTP worker {demo.child_pid}, as the page asked$", timeout=20)
        state = 'document.getElementById("status").dataset.state'
        wait_until(lambda: browser.evaluate(session, state) == "error", 20.0, "the stream to show an error")
        status = browser.evaluate(session, 'document.getElementById("status").textContent')
        broke = re.fullmatch(r"error: the stream broke after (\d+) tokens \(.+\)", status)
        assert broke is not None and shown_before_kill <= int(broke[1]) < words, status
        wait_until(lambda: not pid_alive(demo.child_pid), 10.0, "the killed worker to be gone")

        def new_worker_ready() -> bool:
            now = facts()
            return now["pid"] not in ("?", str(demo.child_pid)) and now["worker"] == "ready"

        wait_until(new_worker_ready, 20.0, "the page to show a new worker pid")
        print(f"new worker pid on the page {time.monotonic() - killed_at:.2f} s after the click")
        # The supervisor counts the restart once start-up returns, which can be just after the new
        # worker's first answer: the next poll shows it.
        wait_until(lambda: facts()["restarts"] == "1", 10.0, "restarts 1 on the page")
        after = facts()
        assert pid_alive(int(after["pid"])), after
        assert f"asked the main process to SIGKILL HTTP worker {demo.child_pid}" in after["events"], after
        assert f"HTTP worker {after['pid']} is serving, in place of {demo.child_pid}" in after["events"], after

        # The generation of the broken stream ends in the main process (its worker died: a
        # CancelRequest); what it counted stays counted.
        cancelled = demo.wait_for_line(rf"main: request \w+ cancelled after (\d+) of {words} tokens$", timeout=20)
        generated = int(cancelled[1])
        assert generated >= max(total_before_kill, int(broke[1])), (generated, total_before_kill, broke[1])
        wait_until(lambda: facts()["total"] == str(generated), 10.0, f"the count {generated} after the restart")

        start_stream(browser, session, PROMPT)
        wait_until(lambda: browser.evaluate(session, state) == "done", 30.0, "a stream on the new worker")
        assert browser.evaluate(session, "document.getElementById('output').textContent") == " ".join(EXPECTED)
        wait_until(
            lambda: facts()["total"] == str(generated + len(EXPECTED)), 10.0, "the count to grow by the new stream"
        )
