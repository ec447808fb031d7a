"""The tests' client: the real ``openai`` package, pointed at a running server."""

from __future__ import annotations

import openai

API_KEY = "sk-test-batching"


def make_client(url: str, api_key: str = API_KEY) -> openai.OpenAI:
    # No retries: a test must see the status the server answered, not the client's second try.
    return openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=30.0)
