"""Token streaming: a ``ChunkStream`` from ``IPCChannel.submit_streaming`` served as Server-Sent Events."""

from isolated_api.worker.sse import SSE_HEADERS, encode_json, error_frame, sse_response

__all__ = ["SSE_HEADERS", "encode_json", "error_frame", "sse_response"]
