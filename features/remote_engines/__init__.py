"""Engines on other machines: an API host's HTTP workers send requests over ZeroMQ to the main
processes of GPU hosts (``EngineHost``), the least-loaded first. Needs the optional extra (its tests
skip without it): ``pip install 'isolated_api[msgspec]'``."""
