"""Graceful shutdown: in-flight requests finish, new ones get 503, then the process exits."""
