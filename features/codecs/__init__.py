"""How messages cross between the HTTP workers and the main process: pickle (default) or msgspec."""
