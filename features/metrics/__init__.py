"""Prometheus metrics: one consistent view of the whole server, kept in the main process."""
