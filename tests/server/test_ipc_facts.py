"""``Server.ipc`` hands users read-only counts of the main process's end of the link (``IPCFacts``),
not the relay that routes the replies."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from isolated_api import IPCFacts
from isolated_api.testing import running, wait_until
from tests.helpers import MainLoop, builder, upper_route


def _reads(facts: IPCFacts) -> bool:
    # Read through a call: mypy would otherwise narrow the property after the first assert.
    return facts.is_running


def test_ipc_facts_counts_live_and_cannot_steer_the_relay(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    """Steps: build a subprocess-mode server, read ``server.ipc`` before the start, serve two
    requests over HTTP, try to set a count and reach the relay's methods. Expected: an ``IPCFacts``
    whose counts follow the server (two forwarded and handed over, none pending, none dropped or rejected), whose
    older names agree with the new ones, and which has no setter and no ``forward`` or ``close``."""
    server = (
        builder("facts")
        .routes.with_route("/upper", upper_route, methods=["POST"])
        .done()
        .subprocess.with_ipc(*queues)
        .done()
        .build()
    )
    facts = server.ipc
    assert isinstance(facts, IPCFacts) and not _reads(facts) and facts.forwarded_count == 0
    with running(server) as url:
        assert _reads(facts) and facts.max_pending == 100
        for text in ("a", "b"):
            assert httpx.post(f"{url}/upper", json={"text": text}, timeout=10).json()["text"] == text.upper()
        wait_until(lambda: facts.pending_count == 0, 10, "both replies routed")
        assert (facts.forwarded_count, facts.dropped_count, facts.rejected_count) == (2, 0, 0)
        # The test's main loop replies from a thread of this process: handed over, not queued.
        assert facts.cancel_notices_sent == 0 and facts.local_replies == 2
        assert (facts.route_count, facts.dropped_replies) == (facts.pending_count, facts.dropped_count)
        with pytest.raises(AttributeError):
            facts.forwarded_count = 0  # type: ignore[misc]
        assert not hasattr(facts, "forward") and not hasattr(facts, "close")
        assert "forwarded_count=2" in repr(facts)
    assert not _reads(facts) and server.ipc is facts
