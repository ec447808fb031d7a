"""LitServe serving the benchmark's ``FakeGPU`` batched, for the side-by-side in
``stress/test_batch_bench.py``: ``python -m stress.litserve_server PORT BOOKS_PATH CALL_S ITEM_S``.

``max_batch_size=32``, ``batch_timeout=0.002``, 2 API servers, one inference worker on the CPU
"accelerator" (the one fake GPU). LitServe is not a dependency of this project: the benchmark
installs it into the .venv (``pip install litserve``) and skips this side without it.
"""

# No ``from __future__ import annotations``: LitServe reads decode_request's annotation at run time
# to build its route, and a string there would not be a body model.
import sys
from typing import Any

import litserve as ls
from pydantic import BaseModel

from stress.fake_gpu import MAX_BATCH, MAX_WAIT, WORKERS, FakeGPU


class InputBody(BaseModel):
    input: str


class FakeModelAPI(ls.LitAPI):  # type: ignore[misc]  # litserve ships no type information
    def __init__(self, books: str, call_seconds: float, item_seconds: float) -> None:
        super().__init__(max_batch_size=MAX_BATCH, batch_timeout=MAX_WAIT)
        self.books = books
        self.call_seconds = call_seconds
        self.item_seconds = item_seconds

    def setup(self, device: Any) -> None:
        # In LitServe's inference worker process: the model's books are opened there.
        self.gpu = FakeGPU.attach(self.books, self.call_seconds, self.item_seconds)

    def decode_request(self, request: InputBody) -> str:
        # A pydantic body, as our route has: both sides validate the same JSON the same way.
        return request.input

    def batch(self, inputs: list[str]) -> list[str]:
        return inputs

    def predict(self, batch: list[str]) -> list[str]:
        self.gpu.run(len(batch))
        return [text.upper() for text in batch]

    def unbatch(self, output: list[str]) -> list[str]:
        return output

    def encode_response(self, output: str) -> dict[str, str]:
        return {"output": output}


def main(port: int, books: str, call_seconds: float, item_seconds: float) -> None:
    server = ls.LitServer(FakeModelAPI(books, call_seconds, item_seconds), accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=port, num_api_servers=WORKERS, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
