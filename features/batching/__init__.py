"""An OpenAI-compatible model server over fake models whose cost is per call: ``/v1/embeddings``
served by ``Engine.batch`` (dynamic batching), ``/v1/chat/completions`` by ``Engine.steps``
(continuous batching of streams), ``/v1/models``, all behind a bearer API key. Run it with
``python -m features.batching --port 8000 --api-key KEY``; see README.md.
Its tests drive the server with the ``openai`` client and skip without it: ``pip install openai``."""
