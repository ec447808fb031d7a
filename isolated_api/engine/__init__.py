"""The Engine: a main loop for the main process that reads request_q, runs handlers and replies."""
