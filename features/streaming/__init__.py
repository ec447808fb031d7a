"""Token streaming: a ``ChunkStream`` from ``IPCChannel.submit_streaming`` served as Server-Sent Events."""
