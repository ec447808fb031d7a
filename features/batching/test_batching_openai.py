"""The OpenAI-compatible server through the real ``openai`` client, over real HTTP to a real HTTP
worker, the engine and the fake models in this process: embeddings, chat completions streamed
and not, the model list, the API key, unknown models, and batches that really share model calls."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

pytest.importorskip("openai", reason="these tests drive the server with the openai client: pip install openai")

import openai

from isolated_api.testing import wait_until

from .batching_clients import API_KEY, make_client
from .batching_models import EMBED_DIMENSION, fake_embedding
from .openai_server import ModelServer

SENTENCE = "the quick brown fox jumps over the lazy dog"


def _raw_sse(url: str, body: dict[str, Any], api_key: str = API_KEY) -> list[str]:
    """The data of every SSE frame of a streamed chat completion, ``[DONE]`` included."""
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def test_batching_models_lists_both_models(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert sorted(m.id for m in models.data) == ["fake-chat", "fake-embed"]
    assert all(m.object == "model" for m in models.data)


def test_batching_embeddings_are_deterministic_per_string(client: openai.OpenAI) -> None:
    """Steps: a list of three strings (two equal), then one of them alone, then base64. Expect one
    vector per input, in order, of the fixed dimension; equal strings equal vectors, different
    strings different ones, the same vector alone as in the list, and base64 decoding to it."""
    inputs = ["hello world", "goodbye", "hello world"]
    listed = client.embeddings.create(model="fake-embed", input=inputs)
    vectors = [item.embedding for item in sorted(listed.data, key=lambda item: item.index)]
    assert [len(v) for v in vectors] == [EMBED_DIMENSION] * 3
    assert vectors == [fake_embedding(text) for text in inputs]
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]
    assert listed.model == "fake-embed" and listed.usage.prompt_tokens == 5
    alone = client.embeddings.create(model="fake-embed", input="goodbye")
    assert [item.embedding for item in alone.data] == [vectors[1]]
    packed = client.embeddings.create(model="fake-embed", input="goodbye", encoding_format="base64")
    raw = base64.b64decode(str(packed.data[0].embedding))
    assert list(struct.unpack(f"<{EMBED_DIMENSION}f", raw)) == vectors[1]


def test_batching_chat_answers_with_the_last_user_message(client: openai.OpenAI) -> None:
    """Expect the words of the last user message (not the system's, not an earlier user's),
    finish_reason "stop", and usage counting one token per word."""
    completion = client.chat.completions.create(
        model="fake-chat",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "an earlier question"},
            {"role": "assistant", "content": "an earlier answer"},
            {"role": "user", "content": f"  {SENTENCE}\n"},
        ],
    )
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == SENTENCE
    assert choice.finish_reason == "stop"
    assert completion.object == "chat.completion" and completion.model == "fake-chat"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2 + 3 + 3 + 9, 9)
    assert completion.usage.total_tokens == 26


def test_batching_chat_max_tokens_cuts_the_answer_with_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="fake-chat", messages=[{"role": "user", "content": SENTENCE}], max_tokens=4
    )
    assert completion.choices[0].message.content == "the quick brown fox"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 4
    exact = client.chat.completions.create(
        model="fake-chat", messages=[{"role": "user", "content": "a b"}], max_tokens=2
    )
    assert (exact.choices[0].message.content, exact.choices[0].finish_reason) == ("a b", "stop")


def test_batching_chat_stream_sends_one_chunk_per_word(client: openai.OpenAI) -> None:
    """Expect chat.completion.chunk objects: the first with the assistant's role, one word each,
    joining to the answer, only the last with a finish_reason (and the usage, asked for)."""
    stream = client.chat.completions.create(
        model="fake-chat",
        messages=[{"role": "user", "content": SENTENCE}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.model == "fake-chat" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    deltas = [c.choices[0].delta for c in chunks]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == SENTENCE
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    # The fake tokenizer's tokens: one word per chunk (a fast client: nothing merged).
    assert len(chunks) == len(SENTENCE.split())
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (9, 9)


def test_batching_chat_stream_is_sse_ending_with_done(served: ModelServer) -> None:
    frames = _raw_sse(
        served.url, {"model": "fake-chat", "messages": [{"role": "user", "content": "one two"}], "stream": True}
    )
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(frame) for frame in frames[:-1]]
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["one", " two"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and "usage" not in chunks[-1]


def test_batching_chat_stream_max_tokens_finishes_with_length(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="fake-chat", messages=[{"role": "user", "content": SENTENCE}], stream=True, max_tokens=3
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "the quick brown"
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize("api_key", [None, "sk-wrong"])
def test_batching_wrong_or_missing_api_key_is_a_401_in_openais_shape(served: ModelServer, api_key: str | None) -> None:
    """Steps: every /v1 route without the Authorization header, then with a wrong key; then the
    openai client with a wrong key. Expect 401 with {"error": {"message", "type", ...}} each time,
    and nothing reaching the models."""
    calls = (served.embedder.calls, served.chat.joined)
    headers = {} if api_key is None else {"Authorization": f"Bearer {api_key}"}
    body = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=served.url, headers=headers, timeout=30) as http:
        answers = [
            http.get("/v1/models"),
            http.post("/v1/embeddings", json={"model": "fake-embed", "input": "hi"}),
            http.post("/v1/chat/completions", json=body),
            http.post("/v1/chat/completions", json={**body, "stream": True}),
        ]
    for answer in answers:
        assert answer.status_code == 401, answer.text
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
        assert "API key" in error["message"]
    with (
        make_client(served.url, api_key or "sk-also-wrong") as wrong,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        wrong.embeddings.create(model="fake-embed", input="hi")
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    assert (served.embedder.calls, served.chat.joined) == calls


def test_batching_unknown_model_is_a_404_in_openais_shape(client: openai.OpenAI) -> None:
    """Expect the openai client's NotFoundError with code "model_not_found", for embeddings and
    for chat completions streamed and not (the stream's status comes before its first chunk)."""
    attempts: list[Callable[[], object]] = [
        lambda: client.embeddings.create(model="no-such-model", input="hi"),
        lambda: client.chat.completions.create(model="fake-embed", messages=[{"role": "user", "content": "hi"}]),
        lambda: list(
            client.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        ),
    ]
    for attempt in attempts:
        with pytest.raises(openai.NotFoundError) as caught:
            attempt()
        assert caught.value.code == "model_not_found"
        assert isinstance(caught.value.body, dict) and "does not exist" in caught.value.body["message"]


def test_batching_concurrent_embeddings_share_model_calls(served: ModelServer, client: openai.OpenAI) -> None:
    """Steps: hold the embedding device (as a long model call would); 16 clients each ask for their
    own string at once; wait until the engine has read all 16 from request_q; release the device.
    Expect every client its own vector and the 16 served in at most 2 model calls (the batch that
    was waiting for the device, then one for all the rest), where one call per request is 16."""
    relay = served.server.ipc
    assert relay is not None, "a subprocess-mode server has its link's facts once started"
    calls, forwarded = served.embedder.calls, relay.forwarded_count
    texts = [f"client {i}" for i in range(16)]
    pool = ThreadPoolExecutor(len(texts))
    try:
        with served.embedder.device.paused():
            futures = [pool.submit(client.embeddings.create, model="fake-embed", input=text) for text in texts]
            wait_until(lambda: relay.forwarded_count - forwarded == len(texts), 30, "16 requests forwarded")
            wait_until(lambda: served.request_q.qsize() == 0, 30, "the engine to read all 16")
        answers = [future.result(timeout=30) for future in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    assert [a.data[0].embedding for a in answers] == [fake_embedding(text) for text in texts]
    assert served.embedder.calls - calls <= 2


def test_batching_concurrent_chat_streams_share_steps(served: ModelServer, client: openai.OpenAI) -> None:
    """Steps: hold the chat device; 8 clients stream answers of 3 to 10 words; wait until all 8
    are read by the engine; release. Expect each client exactly its own words and one step serving
    more than one stream (one generator per request would never)."""
    relay = served.server.ipc
    assert relay is not None, "a subprocess-mode server has its link's facts once started"
    forwarded = relay.forwarded_count
    served.chat.max_active_seen = 0
    prompts = [" ".join(f"w{i}-{j}" for j in range(3 + i)) for i in range(8)]

    def stream(prompt: str) -> str:
        chunks = client.chat.completions.create(
            model="fake-chat", messages=[{"role": "user", "content": prompt}], stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks)

    pool = ThreadPoolExecutor(len(prompts))
    try:
        with served.chat.device.paused():
            futures = [pool.submit(stream, prompt) for prompt in prompts]
            wait_until(lambda: relay.forwarded_count - forwarded == len(prompts), 30, "8 streams forwarded")
            wait_until(lambda: served.request_q.qsize() == 0, 30, "the engine to read all 8")
        answers = [future.result(timeout=30) for future in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    assert answers == prompts
    assert served.chat.max_active_seen > 1


def test_batching_client_leaving_mid_stream_leaves_the_step_loop(served: ModelServer) -> None:
    """Steps: a stream of 2,000 words, read until its first chunk, then the client closes the
    connection. Expect the stepper's leave(why="cancelled") for it (a stream that ran to its end
    would leave with "done")."""
    cancelled = served.chat.left["cancelled"]
    body = {"model": "fake-chat", "messages": [{"role": "user", "content": "w " * 2000}], "stream": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        next(response.iter_lines())
    wait_until(lambda: served.chat.left["cancelled"] == cancelled + 1, 30, "leave(why='cancelled')")


def test_batching_invalid_body_is_a_422_in_openais_shape(served: ModelServer) -> None:
    """Expect a missing field and a token-id input (not served here) to be 422s whose message names
    the field, in OpenAI's error shape, without the input echoed back."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=served.url, headers=headers, timeout=30) as http:
        missing = http.post("/v1/embeddings", json={"model": "fake-embed"})
        tokens = http.post("/v1/embeddings", json={"model": "fake-embed", "input": [[101, 2023] * 1000]})
    for answer in (missing, tokens):
        assert answer.status_code == 422
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error" and "input" in error["message"]
    assert "2023" not in tokens.text
