"""The engine's batching (engine.batch, engine.steps, collect) over real queues and HTTP."""
