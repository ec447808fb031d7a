"""Engines on other machines: an API host's HTTP workers send requests over ZeroMQ to the main
processes of GPU hosts (``EngineHost``), the least-loaded first. Needs two optional extras (its tests
skip without them): ``pip install 'isolated_api[msgspec,remote]'`` (MessagePack on the wire, and
pyzmq)."""
