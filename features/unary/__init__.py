"""Unary requests: a route awaits one reply from the main process; IPC failures become honest
HTTP statuses."""
