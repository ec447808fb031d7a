"""Requests and streams cross to engines on other hosts (here: processes on 127.0.0.1)."""

from __future__ import annotations

import json

import httpx
import pytest

pytest.importorskip("zmq", reason="this slice needs pyzmq: pip install 'isolated_api[remote]'")
pytest.importorskip("msgspec", reason="this slice needs msgspec: pip install 'isolated_api[msgspec]'")

from isolated_api.testing import running

from .engine_farm import EngineFarm, api_builder, wait_ready


def _events(text: str) -> list[dict[str, object]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def test_remote_engines_answer_unary_and_streams_in_order(farm: EngineFarm) -> None:
    gpu1, gpu2 = farm.start("gpu-1"), farm.start("gpu-2")
    server = api_builder(gpu1.address, gpu2.address).build()
    with running(server) as base:
        wait_ready(base, 2)
        with httpx.Client(base_url=base, timeout=20) as client:
            answers = [client.post("/generate", json={"prompt": f"hi{i}"}) for i in range(20)]
            assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
            assert [r.json()["text"] for r in answers] == [f"HI{i}" for i in range(20)]
            # Idle engines tie: the turn rotates, so both serve.
            assert {r.json()["engine"] for r in answers} == {"gpu-1", "gpu-2"}
            response = client.post("/stream", json={"prompt": "t", "tokens": 50})
            assert response.status_code == 200
            tokens = _events(response.text)
            assert [t["index"] for t in tokens] == list(range(50))
            assert tokens[-1]["is_final"] is True
            assert len({t["engine"] for t in tokens}) == 1
            ready = client.get("/health/ready").json()
            assert ready["status"] == "ready"
            assert sorted(e["address"] for e in ready["engines"]) == sorted([gpu1.address, gpu2.address])
            metrics = client.get("/metrics").text
            assert f'isolated_api_engine_up{{engine="{gpu1.address}"' in metrics
            assert f'isolated_api_engine_requests_total{{engine="{gpu2.address}"' in metrics
