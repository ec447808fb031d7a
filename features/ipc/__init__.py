"""The request/reply path between the HTTP process and the main process."""
