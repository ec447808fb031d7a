"""The main-process side: an ``Engine`` that reads ``request_q``, runs your handlers (sync, async,
generators) with bounded concurrency and puts their replies, stream chunks and errors on
``response_q``. Its wire test (``test_engine_wire.py``, the engine with ``MsgspecCodec``) needs the
optional extra and skips without it: ``pip install 'isolated_api[msgspec]'``."""
