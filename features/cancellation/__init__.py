"""Cancellation reaches the main process: a client that goes away stops the work it asked for."""
