"""Validation errors are bounded (issue 16): a 422 keeps FastAPI's shape but never echoes a large
input whole, and lists at most MAX_ERRORS errors. Real uvicorn (direct mode), real HTTP."""

from __future__ import annotations

import httpx
from pydantic import BaseModel

from isolated_api.testing import loopback_builder, serving_direct
from isolated_api.worker.http_errors import MAX_ECHOED_INPUT, MAX_ERRORS, bounded_errors


class Numbers(BaseModel):
    name: str
    values: list[int]


async def numbers_route(body: Numbers) -> dict[str, int]:
    return {"count": len(body.values)}


def test_bounded_validation_errors_clip_large_input_and_cap_the_count() -> None:
    """Steps: a 3 MB string where a list belongs, then 5,000 invalid items. Expect 422s of a few KB
    with FastAPI's fields (type, loc, msg, input), the input cut short, and MAX_ERRORS errors
    plus one saying how many more."""
    server = (
        loopback_builder("validation")
        .routes.with_route("/numbers", numbers_route, methods=["POST"])
        .done()
        .uvicorn.with_max_body_size(16 * 1024 * 1024)
        .done()
        .build()
    )
    with serving_direct(server) as url:
        big = httpx.post(f"{url}/numbers", json={"name": "n", "values": "x" * 3_000_000}, timeout=30)
        assert big.status_code == 422 and len(big.content) < 2_000
        (error,) = big.json()["detail"]
        assert error["type"] == "list_type" and error["loc"] == ["body", "values"] and "msg" in error
        assert error["input"].startswith("x" * MAX_ECHOED_INPUT) and error["input"].endswith("more characters)")

        many = httpx.post(f"{url}/numbers", json={"name": "n", "values": ["a"] * 5_000}, timeout=30)
        assert many.status_code == 422 and len(many.content) < 10_000
        detail = many.json()["detail"]
        assert len(detail) == MAX_ERRORS + 1
        assert all(e["type"] == "int_parsing" and e["input"] == "a" for e in detail[:MAX_ERRORS])
        assert detail[-1]["type"] == "too_many_errors" and "4980 more errors" in detail[-1]["msg"]

        small = httpx.post(f"{url}/numbers", json={"name": 3, "values": [1]}, timeout=30)
        assert small.status_code == 422 and small.json()["detail"][0]["input"] == 3  # small input kept as is


def test_bounded_validation_errors_clip_containers_and_bytes() -> None:
    nested = {"a": ["y" * 150, "z" * 150, list(range(1000))], "b": {"c": 1}}
    (error,) = bounded_errors([{"type": "t", "loc": ["body"], "msg": "m", "input": nested}])
    # The 200-character budget: key "a" and the list cost 5, the first string 150 + 2.
    assert error["input"] == {
        "a": ["y" * 150, "z" * 43 + "...(107 more characters)", "...(1 more items)"],
        "...": "1 more keys",
    }
    (raw,) = bounded_errors([{"type": "t", "loc": [], "msg": "m", "input": b"\xff" + b"b" * 5000}])
    assert raw["input"].endswith(f"...({5001 - MAX_ECHOED_INPUT} more bytes)")
    assert bounded_errors([{"type": "t", "loc": [], "msg": "m", "input": [1, 2]}])[0]["input"] == [1, 2]
